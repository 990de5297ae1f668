"""flatplug's Ray executor: score model zoos across the GPUs and machines of a Ray cluster.

``fp.score(..., executor="ray", address="auto")`` or ``flatplug score --executor ray --address auto``.
"""

from __future__ import annotations

from .executor import RayConnectionError, RayExecutor

__version__ = "0.1.0"
__all__ = ["RayConnectionError", "RayExecutor", "__version__"]
