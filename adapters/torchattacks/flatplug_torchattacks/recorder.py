"""TrajectoryRecorder: run an iterating torchattacks attack unchanged and record its path.

Design: the wrapped attack runs exactly as it would alone (same code, same random draws, so the
same adversarial images), while its ``get_logits`` is intercepted for the duration of the call.
torchattacks' iterating attacks (PGD, PGDL2, BIM, FGSM, MIFGSM, ...) evaluate the model once per
iteration, on the current iterate, with gradients enabled on the images: those calls are the
iterates. For each one the recorder keeps the logits the attack itself computed and, from the
same forward pass (a hook on the penultimate layer), the relative flatness, so recording costs
no extra forward or backward pass. The clean images (first step) and the returned images (last
step) are evaluated by the recorder. Consecutive evaluations of the same point (EOT averaging,
FGSM's single gradient at the clean images) are recorded once. Replaying the attack with
``steps = 1, 2, ...`` would cost O(steps^2) and is wrong for attacks whose schedule depends on the
total number of steps; intercepting is exact and O(steps).

Attacks whose gradient evaluations are not their iterates (look-ahead, input diversity, scaled
or sampled copies, sub-batches of unsolved samples: NIFGSM, DIFGSM, VMIFGSM, APGD, Square, ...)
are refused unless ``strict=False``, in which case the record holds the batch-shaped points where
the attack evaluated its gradient, whatever they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchattacks
from torchattacks.attack import Attack

from flatplug.features import find_layer
from flatplug.measures.relative_flatness import VARIANTS

from ._checks import validate
from ._features import capture, flatness
from .flat_region import FlatRegionAttack
from .local_flatness_pgd import LocalFlatnessPGD
from .trajectory import Trajectory

#: Attacks whose gradient evaluations are exactly their iterates, one per step.
SUPPORTED = (
    torchattacks.FGSM, torchattacks.FFGSM, torchattacks.BIM, torchattacks.RFGSM, torchattacks.PGD,
    torchattacks.PGDL2, torchattacks.EOTPGD, torchattacks.TPGD, torchattacks.MIFGSM, torchattacks.UPGD,
    torchattacks.Jitter, torchattacks.CW, LocalFlatnessPGD, FlatRegionAttack,
)
#: Quantities that can be recorded.
MEASURES = ("loss", "confidence", "relative_flatness")


class TrajectoryRecorder(Attack):
    r"""Wrap an iterating attack; return its adversarial images and keep a :class:`Trajectory` in ``.record``.

    Arguments:
        attack (torchattacks.Attack): the attack to record (see ``SUPPORTED``).
        measures (sequence of str): what to record per step and sample, among ``"loss"``
            (cross-entropy of the labels, or of the targets in a targeted mode), ``"confidence"``
            (largest wrong-class probability, or the target's probability in a targeted mode) and
            ``"relative_flatness"`` (of the penultimate layer, Petzka et al. 2021).
            (Default: all three)
        layer (str, nn.Module or None): the penultimate-weights layer; None for the last
            ``nn.Linear``. (Default: None)
        variant (str): relative-flatness variant, ``"pairwise"`` or ``"trace"``. (Default: ``"pairwise"``)
        strict (bool): refuse attacks whose gradient evaluations are not their iterates. (Default: True)

    Normalisation, model-mode and targeted-mode settings are shared with the wrapped attack:
    set them on either before wrapping, or on the recorder afterwards (they propagate). Every
    recorded point is evaluated in the mode the attack evaluates in (with
    ``set_model_training_mode(model_training=True)``: train mode, batch norm and dropout in eval
    mode unless asked otherwise), and the recorder leaves batch-norm running statistics as the
    wrapped attack alone would (unchanged, unless ``batchnorm_training=True``).

    Examples::
        >>> recorder = TrajectoryRecorder(torchattacks.PGD(model, eps=8/255, steps=20))
        >>> adv_images = recorder(images, labels)
        >>> recorder.record.values["relative_flatness"].shape   # [steps, N]
    """

    def __init__(self, attack, measures=MEASURES, layer=None, variant="pairwise", strict=True):
        if not isinstance(attack, Attack):
            raise TypeError(f"attack: expected a torchattacks.Attack to record, got {type(attack).__name__}")
        if strict and not isinstance(attack, SUPPORTED):
            names = ", ".join(cls.__name__ for cls in SUPPORTED)
            raise TypeError(
                f"attack: cannot record {type(attack).__name__}: its gradient evaluations are not its iterates; "
                f"supported: {names} (or pass strict=False to record its batch-shaped gradient evaluations)"
            )
        if isinstance(measures, str):
            measures = (measures,)
        measures = tuple(measures)
        unknown = [m for m in measures if m not in MEASURES]
        if unknown or not measures:
            raise ValueError(f"measures: expected a non-empty selection of {', '.join(map(repr, MEASURES))}, got {measures!r}")
        if variant not in VARIANTS:
            raise ValueError(f"variant: expected one of {', '.join(map(repr, VARIANTS))}, got {variant!r}")
        super().__init__("TrajectoryRecorder", attack.model)
        self.measures = measures
        self.variant = variant
        self.layer = layer
        self.layer_name = find_layer(attack.model, layer)[0] if "relative_flatness" in measures else None
        self.strict = bool(strict)
        # the record holds tensors: bypass Attack.__setattr__, whose search for sub-attacks compares with ==
        object.__setattr__(self, "record", None)
        # share the wrapped attack's settings (set_* calls on the recorder propagate to it)
        self.supported_mode = list(attack.supported_mode)
        self.attack_mode, self.targeted = attack.attack_mode, attack.targeted
        self._target_map_function = attack._target_map_function
        if getattr(attack, "_kth_min", None) is not None:
            self._kth_min = attack._kth_min
        if attack.normalization_used is not None:
            norm = attack.normalization_used
            self.set_normalization_used(norm["mean"].flatten().tolist(), norm["std"].flatten().tolist())
            self._normalization_applied = attack._normalization_applied
        self._model_training = attack._model_training
        self._batchnorm_training = attack._batchnorm_training
        self._dropout_training = attack._dropout_training
        self.device = attack.device
        self.wrapped = attack  # registered in _attacks, so set_* methods reach it

    # -- recording ---------------------------------------------------------
    def _evaluate(self, fn, inputs, layer):
        """Call ``fn(inputs)`` (the attack's own get_logits); returns (logits, per-sample kappa or None)."""
        if layer is None:
            return fn(inputs), None
        with capture(layer) as box:
            logits = fn(inputs)
        phi = box.take(logits) if isinstance(logits, torch.Tensor) else None
        kappa = None if phi is None else flatness(phi.detach(), layer, self.variant).detach()
        return logits, kappa

    def forward(self, images, labels):
        r"""Overridden."""
        images, labels = validate(self, images, labels)
        images = images.clone().detach().to(self.device)
        labels = labels.clone().detach().to(self.device)
        inner = self.wrapped
        layer = find_layer(inner.model, self.layer)[1] if self.layer_name is not None else None
        last: dict[str, torch.Tensor] = {}  # the latest recorded point, to skip repeated evaluations
        logits_seq: list[torch.Tensor] = []
        kappa_seq: list[torch.Tensor | None] = []
        targets: dict[str, torch.Tensor] = {}

        def keep(x, logits, kappa):
            last["x"] = x.detach().clone()
            logits_seq.append(logits.detach().to(torch.float64).cpu())
            kappa_seq.append(None if kappa is None else kappa.to(torch.float64).cpu())

        own_get_logits = inner.get_logits
        own_get_target = inner.get_target_label

        def get_logits(inputs, *args, **kwargs):
            call = lambda z: own_get_logits(z, *args, **kwargs)  # noqa: E731
            if not (isinstance(inputs, torch.Tensor) and inputs.requires_grad and inputs.shape == images.shape):
                return call(inputs)
            logits, kappa = self._evaluate(call, inputs, layer)
            if not (isinstance(logits, torch.Tensor) and logits.dim() == 2 and logits.shape[0] == images.shape[0]):
                return logits
            if not torch.equal(last["x"], inputs.detach()):
                keep(inputs, logits, kappa)
            return logits

        def get_target_label(*args, **kwargs):
            result = own_get_target(*args, **kwargs)
            targets["targets"] = result.detach().clone()
            return result

        with torch.no_grad():
            logits, kappa = self._evaluate(self.get_logits, images, layer)
        keep(images, logits, kappa)
        object.__setattr__(inner, "get_logits", get_logits)
        object.__setattr__(inner, "get_target_label", get_target_label)
        modes = [(m, m.training) for m in inner.model.modules()]
        try:
            adv_images = inner(images, labels)
        finally:
            del inner.__dict__["get_logits"], inner.__dict__["get_target_label"]
            # the wrapped attack's __call__ ends with model.train() when it found the model in train mode, which
            # the recorder's own set_model_training_mode(model_training=True) causes: that would put batch norm
            # in train mode for the final evaluation (batch statistics, running statistics updated). Restore the
            # evaluation mode the attack ran in, per module.
            for module, mode in modes:
                module.training = mode
        with torch.no_grad():
            logits, kappa = self._evaluate(self.get_logits, adv_images, layer)
        keep(adv_images, logits, kappa)
        record = self._build(logits_seq, kappa_seq, labels, targets.get("targets") if inner.targeted else None)
        object.__setattr__(self, "record", record)
        return adv_images

    def _build(self, logits_seq, kappa_seq, labels, targets) -> Trajectory:
        logits = torch.stack(logits_seq)  # [T, N, K]
        labels_cpu = labels.detach().cpu()
        targets_cpu = None if targets is None else targets.detach().cpu().long()
        aim = labels_cpu if targets_cpu is None else targets_cpu
        t, n, k = logits.shape
        values: dict[str, torch.Tensor] = {}
        if "loss" in self.measures:
            values["loss"] = F.cross_entropy(logits.reshape(t * n, k), aim.repeat(t), reduction="none").view(t, n)
        if "confidence" in self.measures:
            probs = logits.softmax(-1)
            index = aim.view(1, n, 1).expand(t, n, 1)
            if targets_cpu is None:
                values["confidence"] = probs.scatter(2, index, float("-inf")).amax(2)
            else:
                values["confidence"] = probs.gather(2, index).squeeze(2)
        if "relative_flatness" in self.measures:
            values["relative_flatness"] = torch.stack(kappa_seq)
        settings = {
            "attack": self.wrapped.attack,
            "attack_mode": self.wrapped.attack_mode,
            "measures": list(self.measures),
            "layer": self.layer_name,
            "variant": self.variant,
            "strict": self.strict,
        }
        for key in ("eps", "alpha", "steps", "norm"):
            value = getattr(self.wrapped, key, None)
            if isinstance(value, (int, float, str)):
                settings[key] = value
        return Trajectory(attack=self.wrapped.attack, values=values, predicted=logits.argmax(-1),
                          labels=labels_cpu, targets=targets_cpu, settings=settings)
