"""The embedded default zoo: small CNNs trained on scikit-learn's digits with varied training.

Eight models that differ only in how they were trained (standard, PGD-AT at two eps, LFR,
SAM, ASAM, AWP, FAM), so flatness and robustness vary for known reasons. Trained once
(about 20 s on 2 CPU cores) and cached under the user's cache folder; later loads take
milliseconds. The cache key includes the recipe, flatplug's source code and torch's version, so a
changed recipe or code retrains: a cached model is always what this code trains.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

import torch
from torch import nn

from ..types import LoadedModel
from .digits import load_digits
from .subset import to_loader

#: name -> (training method, method parameters)
RECIPES: dict[str, tuple[str, dict]] = {
    "standard": ("standard", {}),
    "pgd-at-0.05": ("pgd-at", {"eps": 0.05, "steps": 3}),
    "pgd-at-0.15": ("pgd-at", {"eps": 0.15, "steps": 3}),
    "lfr": ("lfr", {"eps": 0.1, "lam": 0.02, "steps": 2}),
    "sam": ("sam", {"rho": 0.1}),
    "asam": ("asam", {"rho": 1.0}),
    "awp": ("awp", {"eps": 0.1, "steps": 3, "gamma": 0.01}),
    "fam": ("fam", {"lam": 0.05}),
}
#: what ``flatplug score`` (the demo) measures: the default measures plus weight-space sharpness and
#: landscapes, each with the settings it declares for zoos (see ``flatplug.ext.MeasureInfo``)
SCORED_MEASURES = ("relative_flatness", "hessian_eigenvalues", "hessian_trace", "local_flatness", "sharpness",
                   "loss_landscape")
EPOCHS = 10
BATCH = 64
LR = 3e-3


def digits_cnn(seed: int = 0) -> nn.Sequential:
    """A two-layer CNN for 1x8x8 digits (about 13k parameters)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(16 * 16, 32), nn.ReLU(), nn.Linear(32, 10),
    )


def cache_dir() -> Path:
    """``$FLATPLUG_CACHE`` or ``$XDG_CACHE_HOME/flatplug`` (default ``~/.cache/flatplug``)."""
    if os.environ.get("FLATPLUG_CACHE"):
        return Path(os.environ["FLATPLUG_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "flatplug"


@functools.lru_cache(maxsize=None)
def code_digest() -> str:
    """SHA-256 of flatplug's own source files (paths and contents).

    Training is deterministic but chaotic: a change anywhere on its path (the training loop, an
    attack, a batch layout) that moves one float changes the trained weights and every number
    measured on them, while the methods' declared versions stay put. So a cached demo model is
    used only by the exact code that trained it; any other code retrains (about 20 s).
    """
    return source_digest(Path(__file__).resolve().parents[1])


def source_digest(root: Path) -> str:
    """One digest over the relative paths and contents of the ``*.py`` files under ``root``.

    The files are hashed directly, not through ``fingerprint.file_sha256``: its persistent cache
    would write an entry per source file for every edit, more work than hashing a few hundred KB.
    """
    from .fingerprint import combine

    return combine(files={file.relative_to(root).as_posix(): hashlib.sha256(file.read_bytes()).hexdigest()
                          for file in sorted(root.rglob("*.py"))})


def _key(name: str) -> str:
    """The cache key of a demo model: its recipe, the implementation version of its training method,
    flatplug's source code and torch's version (:func:`code_digest`)."""
    from .. import plugins

    method, params = RECIPES[name]
    recipe = {"method": method, "params": params, "epochs": EPOCHS, "batch": BATCH, "lr": LR, "version": 2,
              "method_version": plugins.info("trainers", method).version, "code": code_digest(),
              "torch": torch.__version__}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


class DemoSource:
    """The digits demo zoo as a model source (``names``/``load``)."""

    def __init__(self, cache: str | os.PathLike | None = None, quiet: bool = True):
        self.cache = Path(cache) if cache is not None else cache_dir() / "demo"
        self.quiet = quiet

    def names(self, dataset: str | None = None) -> list[str]:
        if dataset not in (None, "digits"):
            raise ValueError(f"dataset: the demo zoo is trained on 'digits', not {dataset!r}")
        return list(RECIPES)

    def path(self, name: str) -> Path:
        return self.cache / f"{name}-{_key(name)}.pt"

    def train(self, name: str) -> nn.Sequential:
        """Train ``name`` from its recipe (deterministic on the CPU)."""
        from ..training import train

        method, params = RECIPES[name]
        x, y = load_digits(split="train")
        model = digits_cnn(0)
        opt = torch.optim.Adam(model.parameters(), lr=LR)
        torch.manual_seed(0)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # a 13k-parameter net on 64-image batches: threads only add overhead
        try:
            train(model, to_loader(x, y, BATCH), method=method, epochs=EPOCHS, optimizer=opt, quiet=self.quiet,
                  **params)
        finally:
            torch.set_num_threads(threads)
        return model

    def missing(self) -> list[str]:
        """The demo models not trained yet (their first use trains them, 4 to 8 s of CPU time each)."""
        return [name for name in RECIPES if not self.path(name).is_file()]

    def _checkpoint(self, name: str) -> Path:
        """The cached checkpoint of ``name``, trained and saved first when absent."""
        if name not in RECIPES:
            import difflib

            close = difflib.get_close_matches(name, list(RECIPES), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise LookupError(f"unknown demo model {name!r}.{hint} Demo models: {', '.join(RECIPES)}")
        file = self.path(name)
        if not file.is_file():
            model = self.train(name)
            file.parent.mkdir(parents=True, exist_ok=True)
            tmp = file.with_suffix(f".{os.getpid()}.tmp")
            torch.save(model.state_dict(), tmp)
            tmp.replace(file)  # atomic: a killed run never leaves half a checkpoint
        return file

    def fingerprint(self, name: str) -> str:
        """The content of demo model ``name``: the SHA-256 of its checkpoint (trained first when absent)."""
        from .fingerprint import combine, file_sha256

        return combine(checkpoint=file_sha256(self._checkpoint(name)), architecture="digits-cnn")

    def load(self, name: str, device: str | torch.device = "cpu") -> LoadedModel:
        file = self._checkpoint(name)
        model = digits_cnn(0)
        model.load_state_dict(torch.load(file, map_location="cpu", weights_only=True))
        method, params = RECIPES[name]
        return LoadedModel(
            name=name, module=model.to(device).eval(), dataset="digits", threat_model="Linf",
            metadata={"architecture": "digits-cnn", "training": method, "training_params": params,
                      "epochs": EPOCHS, "source": "demo", "input_shape": [1, 8, 8], "checkpoint": str(file)},
        )
