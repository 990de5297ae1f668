"""flatplug adapter for torchattacks.

* every torchattacks attack by name, for flatplug's scoring (``attack="apgd", eps=8/255``);
* :class:`AutoAttack`: the original AutoAttack's settings (Croce & Hein 2020; 100 iterations, per-image
  ensemble, ``version`` standard/plus/rand/custom) from torchattacks' members, registered as ``autoattack``;
* :class:`LocalFlatnessPGD`: the inner maximiser of Local Flatness Regularisation (Xu et al. 2020);
* :class:`FlatRegionAttack`: confidently wrong adversarial examples in flat regions (Walter et al. 2025);
* :class:`TrajectoryRecorder`: per-step loss, wrong-class confidence and relative flatness along an
  attack's path (plot it with ``flatplug.report.plot_trajectory``).
"""

from __future__ import annotations

from .autoattack import AutoAttack
from .catalog import SKIPPED, attack_factories, make_factory
from .flat_region import FlatRegionAttack
from .local_flatness_pgd import LocalFlatnessPGD
from .recorder import TrajectoryRecorder
from .trajectory import Trajectory

__version__ = "0.1.0"

__all__ = [
    "AutoAttack", "FlatRegionAttack", "LocalFlatnessPGD", "SKIPPED", "Trajectory", "TrajectoryRecorder", "attack_factories",
    "make_factory", "__version__",
]
