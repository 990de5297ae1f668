"""flatplug adapter for RobustBench: its model zoo as the ``robustbench`` source, leaderboard
metadata, and the ``cifar10``, ``cifar100`` and ``imagenet`` datasets through ``robustbench.data``.

robustbench itself is imported lazily (see ``_compat``), so importing this package is cheap.
"""

from __future__ import annotations

from .datasets import DatasetNotFoundError, load_cifar10, load_cifar100, load_imagenet
from .leaderboard import LeaderboardError, build_snapshot, lookup, metadata_from_record, read_model_info, snapshot
from .source import CheckpointDownloadError, CheckpointNotFoundError, RobustBenchSource, Weights

__version__ = "0.1.0"

__all__ = [
    "CheckpointDownloadError", "CheckpointNotFoundError", "DatasetNotFoundError", "LeaderboardError",
    "RobustBenchSource", "Weights", "build_snapshot", "load_cifar10", "load_cifar100", "load_imagenet", "lookup",
    "metadata_from_record", "read_model_info", "snapshot",
]
