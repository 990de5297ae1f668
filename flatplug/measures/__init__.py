"""Flatness measures, one module per family; each is ``fn(model, data, **params) -> Measurement``.

The package attributes are the measure functions (``fp.measures.relative_flatness(...)``);
helpers inside a family are imported from its module
(``from flatplug.measures.relative_flatness import closed_form``).
"""

from __future__ import annotations

from . import feature_displacement as _feature_displacement
from . import feature_robustness as _feature_robustness
from . import hessian_density as _hessian_density
from . import hessian_eigenvalues as _hessian_eigenvalues
from . import hessian_trace as _hessian_trace
from . import local_flatness as _local_flatness
from . import loss_landscape as _loss_landscape
from . import relative_flatness as _relative_flatness
from . import sharpness as _sharpness
from .feature_displacement import feature_displacement
from .feature_robustness import feature_robustness
from .hessian_density import hessian_density
from .hessian_eigenvalues import hessian_eigenvalues
from .hessian_trace import hessian_trace
from .local_flatness import local_flatness
from .loss_landscape import loss_landscape
from .relative_flatness import relative_flatness
from .sharpness import sharpness

_MODULES = (_relative_flatness, _hessian_eigenvalues, _hessian_trace, _hessian_density, _sharpness,
            _loss_landscape, _local_flatness, _feature_robustness, _feature_displacement)
#: every built-in measure, by its registered name
MEASURES = {fn.__name__: fn for fn in (getattr(m, m.__name__.rsplit(".", 1)[1]) for m in _MODULES)}
#: what each built-in measure declares when it registers (version, zoo defaults, ...)
INFOS = {m.__name__.rsplit(".", 1)[1]: m.INFO for m in _MODULES}

__all__ = sorted(MEASURES)
