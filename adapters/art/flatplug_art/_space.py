"""The classifier's input range (ART ``clip_values``) mapped onto the [0, 1] images flatplug works with.

flatplug's attacks and input-space methods (PGD, LFR) work on images in [0, 1]. An ART classifier
declares its own range ``clip_values = (lo, hi)``: data ``x`` in ART units becomes
``u = (x - lo) / (hi - lo)`` for the core, and the module the core trains maps ``u`` back to
``x`` before the classifier's preprocessing, so the network sees exactly what ART feeds it.
Radii and step sizes given in ART units are divided by ``hi - lo``. For ``clip_values=(0, 1)`` all
of this is the identity. Without ``clip_values`` the data pass through unchanged, which suits the
methods that do not perturb inputs (SAM, ASAM, FAM).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

#: method parameters that are lengths in input space and so scale with the clip range
INPUT_LENGTHS = ("eps", "step_size", "lfr_step_size")


@dataclass(frozen=True)
class InputSpace:
    """``low``/``high``: the classifier's scalar clip range, or ``None`` when it declares none (or declares
    per-feature ranges, ``per_feature``: then the data pass through unchanged, which suits methods that
    do not perturb inputs; those that do are refused by :meth:`require`)."""

    low: float | None = None
    high: float | None = None
    per_feature: bool = False

    @classmethod
    def of(cls, classifier) -> "InputSpace":
        clip = classifier.clip_values
        if clip is None:
            return cls()
        lo, hi = np.asarray(clip[0], dtype=np.float64), np.asarray(clip[1], dtype=np.float64)
        if lo.size > 1 and np.ptp(lo) > 0 or hi.size > 1 and np.ptp(hi) > 0:
            return cls(per_feature=True)
        return cls(float(lo.flat[0]), float(hi.flat[0]))

    @property
    def bounded(self) -> bool:
        return self.low is not None

    @property
    def identity(self) -> bool:
        return not self.bounded or (self.low == 0.0 and self.high == 1.0)

    @property
    def width(self) -> float:
        return 1.0 if not self.bounded else self.high - self.low  # type: ignore[operator]

    def require(self, who: str) -> None:
        """Raise when a method that perturbs inputs meets a classifier without one clip range."""
        if self.per_feature:
            raise ValueError(
                f"{who} perturbs inputs: per-feature clip ranges are not supported by flatplug's input-space "
                "methods; give the PyTorchClassifier one (min, max) pair, e.g. clip_values=(0, 1), or train "
                "with a method that does not perturb inputs (standard, sam, asam, fam)"
            )
        if not self.bounded:
            raise ValueError(
                f"{who} perturbs inputs inside the valid input range, but the classifier has no clip_values; "
                "build the PyTorchClassifier with clip_values=(0, 1) (or your data's (min, max))"
            )

    def scale_lengths(self, params: dict) -> dict:
        """``params`` with the input-space lengths (eps, step sizes) converted from ART units to [0, 1] units."""
        out = dict(params)
        for key in INPUT_LENGTHS:
            if out.get(key) is not None and isinstance(out[key], (int, float)) and not isinstance(out[key], bool):
                out[key] = out[key] / self.width
        return out

    def to_unit(self, x: np.ndarray, *, name: str = "x", strict: bool = True) -> np.ndarray:
        """ART-unit data -> float32 data for the core, in [0, 1] when the range is bounded (checked).

        ``strict=False`` (methods that do not perturb inputs, which ART's ``fit`` lets see data outside
        ``clip_values``): no range check and no clipping; the map stays exact both ways."""
        x = np.asarray(x)
        if x.dtype == object or not np.issubdtype(x.dtype, np.number):
            raise TypeError(f"{name}: expected a numeric numpy array of inputs, got dtype {x.dtype}")
        x = x.astype(np.float32, copy=False)
        if x.ndim < 2 or x.shape[0] == 0:
            raise ValueError(f"{name}: expected a non-empty batch of inputs with shape [N, ...], got shape {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError(f"{name}: the inputs contain NaN or inf; clean or drop those samples")
        if not self.bounded:
            return x
        if not strict:
            return x if self.identity else ((x - np.float32(self.low)) / np.float32(self.width)).astype(np.float32)
        lo, hi = float(x.min()), float(x.max())
        if lo < self.low or hi > self.high:  # type: ignore[operator]
            raise ValueError(
                f"{name}: values span [{lo:.9g}, {hi:.9g}], outside the classifier's clip_values "
                f"[{self.low:.9g}, {self.high:.9g}]; rescale the data or fix clip_values (a method that "
                "perturbs inputs keeps them inside this range)"
            )
        if self.identity:
            return x
        return np.clip((x - np.float32(self.low)) / np.float32(self.width), 0.0, 1.0).astype(np.float32)

    def from_unit_numpy(self, u: np.ndarray) -> np.ndarray:
        if self.identity:
            return u.astype(np.float32, copy=False)
        return (np.float32(self.low) + u * np.float32(self.width)).astype(np.float32)

    def from_unit(self, u: torch.Tensor) -> torch.Tensor:
        """[0, 1] tensor -> ART units (differentiable)."""
        if self.identity:
            return u
        return u * self.width + self.low
