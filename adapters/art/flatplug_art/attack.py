"""Inner maximisers for adversarial training, as the core's ``attack(x, y) -> x_adv`` callable on [0, 1] tensors."""

from __future__ import annotations

import numpy as np
import torch

from flatplug.attacks import pgd

from ._space import InputSpace


class ARTAttack:
    """An ART ``EvasionAttack`` run on [0, 1] tensors: converted to the classifier's units and back.

    The attack keeps its own settings (eps, steps, norm, in ART units); it usually targets the
    classifier being trained, so it sees the weights of the current step.
    """

    def __init__(self, attack, space: InputSpace, nb_classes: int):
        if getattr(attack, "targeted", False):
            raise ValueError("attack: targeted attacks cannot drive adversarial training; build it with targeted=False")
        if "verbose" in getattr(attack, "attack_params", ()):
            attack.set_params(verbose=False)  # one progress bar per batch would flood the output (ART does the same)
        self.attack, self.space, self.nb_classes = attack, space, nb_classes

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_art = self.space.from_unit_numpy(x.detach().cpu().numpy())
        onehot = np.eye(self.nb_classes, dtype=np.float32)[y.detach().cpu().numpy()]
        adv = self.attack.generate(x=x_art, y=onehot)
        u = adv if self.space.identity else (adv - np.float32(self.space.low)) / np.float32(self.space.width)
        return torch.from_numpy(np.asarray(u)).to(device=x.device, dtype=x.dtype).clamp(0.0, 1.0)

    def __repr__(self) -> str:
        return f"ARTAttack({type(self.attack).__name__})"


class CorePGD:
    """flatplug's own PGD bound to a model, with fresh random starts (global RNG) as training expects.

    ``loss_fn``: the per-sample loss it ascends (the trainer's, i.e. the classifier's own loss).
    """

    def __init__(self, model: torch.nn.Module, *, eps: float, norm: str, steps: int, step_size: float | None,
                 random_start: bool, loss_fn=None):
        self.model, self.eps, self.norm, self.steps = model, eps, norm, steps
        self.step_size, self.random_start, self.loss_fn = step_size, random_start, loss_fn

    @classmethod
    def like(cls, model: torch.nn.Module, method) -> "CorePGD":
        """The PGD a core method (PGD-AT, AWP, LFR...) trains against: its eps, norm, steps, step size and loss."""
        return cls(model, eps=method.eps, norm=method.norm, steps=getattr(method, "steps", 10),
                   step_size=getattr(method, "step_size", None), random_start=getattr(method, "random_start", True),
                   loss_fn=method.loss_fn)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return pgd(self.model, x, y, eps=self.eps, norm=self.norm, steps=self.steps, step_size=self.step_size,
                   random_start=self.random_start, seed=None, loss_fn=self.loss_fn)


def inner_attack(attack, space: InputSpace, nb_classes: int):
    """``None``, an ART ``EvasionAttack`` (adapted) or any ``attack(x, y)`` callable on [0, 1] tensors."""
    if attack is None:
        return None
    from art.attacks.attack import EvasionAttack

    if isinstance(attack, EvasionAttack):
        return ARTAttack(attack, space, nb_classes)
    if callable(attack):
        return attack
    raise TypeError(
        f"attack: expected an ART EvasionAttack (e.g. ProjectedGradientDescent(classifier, ...)) or a callable "
        f"attack(x, y) -> x_adv on [0, 1] tensors, got {type(attack).__name__}"
    )
