"""flatplug's error types, in one public place: core, adapters and third-party plugins raise these.

Each subclasses the built-in exception a caller would already catch (``ValueError``,
``LookupError``, ``FileNotFoundError``), so code written against plain Python keeps working.
Every message says what was wrong and what to do.
"""

from __future__ import annotations

__all__ = [
    "CheckpointDownloadError", "CheckpointError", "CheckpointNotFoundError", "DuplicatePluginError",
    "IDXError", "ManifestError", "PluginWarning", "StoreError", "UnknownModelError", "UnknownPluginError",
]


class PluginWarning(UserWarning):
    """A plugin could not be loaded; the others still work."""


class DuplicatePluginError(ValueError):
    """Two plugins registered the same name for the same kind."""


class UnknownPluginError(LookupError):
    """No registered object has the requested name (the message lists the closest match)."""


class UnknownModelError(LookupError):
    """A model source has no model of that name (the message lists the closest names)."""


class ManifestError(ValueError):
    """A zoo manifest is not valid JSON, or an entry or layer list is malformed."""


class CheckpointError(ValueError):
    """A checkpoint cannot be read, or its tensors do not fit the model's architecture."""


class CheckpointNotFoundError(FileNotFoundError):
    """A model's weights are not on disk and cannot be downloaded now (the message names the files)."""


class CheckpointDownloadError(OSError):
    """A checkpoint download was attempted and failed."""


class IDXError(ValueError):
    """An IDX (MNIST) file is corrupt, truncated or not an IDX file."""


class StoreError(RuntimeError):
    """The results store cannot be opened or written; the message says why and what to do."""
