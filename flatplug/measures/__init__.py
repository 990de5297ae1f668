"""Flatness measures, one module per family; each is ``fn(model, data, **params) -> Measurement``.

The package attributes are the measure functions (``fp.measures.relative_flatness(...)``);
helpers inside a family are imported from its module
(``from flatplug.measures.relative_flatness import closed_form``).
"""

from __future__ import annotations

from .hessian_density import hessian_density
from .hessian_eigenvalues import hessian_eigenvalues
from .hessian_trace import hessian_trace
from .local_flatness import local_flatness
from .loss_landscape import loss_landscape
from .relative_flatness import relative_flatness
from .sharpness import sharpness

#: every built-in measure, by its registered name
MEASURES = {
    fn.__name__: fn
    for fn in (
        relative_flatness, hessian_eigenvalues, hessian_trace, hessian_density, sharpness, loss_landscape,
        local_flatness,
    )
}

__all__ = sorted(MEASURES)
