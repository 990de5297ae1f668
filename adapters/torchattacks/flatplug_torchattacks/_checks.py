"""Input checks for torchattacks attacks, which in 3.5 silently clamp whatever they are given.

The checks run inside ``forward``, i.e. after ``Attack.__call__`` has undone any normalisation
declared with ``set_normalization_used``: the images checked are the [0, 1] images the attack
works on. Undoing a normalisation is not exact in floating point, so then values within
``NORMALIZED_TOLERANCE`` of [0, 1] are accepted and clamped back into it.
"""

from __future__ import annotations

import torch

from flatplug.ext import check_inputs, check_labels

#: How far outside [0, 1] an inverse-normalised image may stray through rounding alone.
NORMALIZED_TOLERANCE = 1e-5


def check_images(attack, images: torch.Tensor) -> torch.Tensor:
    """Floating, finite, batched images in [0, 1]; returns them (clamped if only rounding strayed)."""
    normalized = getattr(attack, "normalization_used", None) is not None
    where = f"{attack.attack}: images"
    check_inputs(images, name=where, unit_range=not normalized)
    if normalized:
        lo, hi = map(float, torch.aminmax(images))
        if lo < -NORMALIZED_TOLERANCE or hi > 1 + NORMALIZED_TOLERANCE:
            raise ValueError(
                f"{where}: after undoing the normalisation set with set_normalization_used, expected images in "
                f"[0, 1], got min {lo:g} and max {hi:g}; pass images normalised with the same mean and std "
                "(torchattacks' convention), or drop set_normalization_used and pass [0, 1] images"
            )
        return images.clamp(0, 1)
    return images


def check_attack_labels(attack, labels: torch.Tensor | None, n: int) -> None:
    """Integer labels ``[N]``, one per image (the targets in ``set_mode_targeted_by_label`` mode)."""
    where = f"{attack.attack}: labels"
    if labels is None:
        raise ValueError(f"{where}: expected one integer label per image, got None; pass attack(images, labels)")
    check_labels(labels, n, name=where)


def check_label_range(attack, labels: torch.Tensor, num_classes: int) -> None:
    """Labels in ``0 .. num_classes - 1`` (the model's number of outputs)."""
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(
            f"{attack.attack}: labels must lie in 0..{num_classes - 1} for a model with {num_classes} outputs, "
            f"got min {lo} and max {hi}"
        )


def check_logits_shape(attack, logits: object, n: int) -> torch.Tensor:
    """The model returned ``[N, classes]`` logits."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != n:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(
            f"{attack.attack}: expected the model to return logits of shape [{n}, classes], got {shape}; "
            "wrap the model so that forward(x) returns one row of class scores per image"
        )
    return logits


def validate(attack, images: torch.Tensor, labels: torch.Tensor | None, *, check_range: bool = True):
    """All checks of one ``forward(images, labels)`` call; returns ``(images, labels)`` to attack.

    With ``check_range`` the model is run once (eval mode, no grad, on the first two images) to
    learn its number of classes, so that labels beyond it are reported here rather than as an
    index error deep inside the attack.
    """
    images = check_images(attack, images)
    check_attack_labels(attack, labels, images.shape[0])
    if check_range:
        check_label_range(attack, labels, num_classes(attack, images))
    return images, labels


def num_classes(attack, images: torch.Tensor) -> int:
    """The model's number of outputs, from one forward pass in eval mode without gradients.

    The pass runs on the first two images only (the number of outputs does not depend on the
    batch; two rather than one, so that a model ending in ``squeeze()`` still returns
    ``[2, classes]``): on the whole batch it cost a full extra forward pass per attack call.
    Eval mode keeps batch-norm statistics untouched; every module's mode is restored after.
    """
    device = getattr(attack, "device", None) or images.device
    probe = images[:2]
    modes = [(m, m.training) for m in attack.model.modules()]
    attack.model.eval()
    try:
        with torch.no_grad():
            logits = check_logits_shape(attack, attack.get_logits(probe.to(device)), probe.shape[0])
    finally:
        for module, mode in modes:
            module.training = mode
    return int(logits.shape[1])
