"""A third-party flatplug plugin: registers the measures ``weight_norm_sq`` and ``first_order_gain``.

Install it (``pip install examples/third_party_plugin``) and it is found through the ``flatplug``
entry-point group: ``fp.measure("weight_norm_sq", model, (x, y))``. Each measure declares what
scoring needs (``flatplug.ext.MeasureInfo`` fields), exactly as the built-in measures do:
its implementation version (part of every stored row's key), its settings for a model zoo, and
the attack settings it follows, so ``flatplug score --measures first_order_gain`` measures the
ball the attack searches.
"""

import time

import torch
import torch.nn.functional as F

import flatplug
from flatplug.ext import Batches, check_choice, check_positive, model_device_dtype, preserved


def weight_norm_sq(model, data, *, which="all"):
    """Sum of squared parameters: the simplest scale-dependent 'sharpness' proxy.

    ``which="all"``: every parameter; ``"weights"``: only parameters with two or more dimensions
    (weight matrices and kernels, no biases or norm scales).
    """
    check_choice(which, "which", ("all", "weights"))
    start = time.perf_counter()
    value = sum(float(p.detach().pow(2).sum()) for p in model.parameters() if which == "all" or p.dim() >= 2)
    return flatplug.Measurement("weight_norm_sq", value, details={"which": which},
                                seconds=time.perf_counter() - start)


def check_first_order_gain(*, eps, norm):
    """The settings alone, so that scoring refuses a bad one before any model is loaded."""
    check_positive(eps, "eps", allow_zero=True)
    check_choice(norm, "norm", ("linf", "l2"))


def first_order_gain(model, data, *, eps, norm="linf"):
    """Mean first-order prediction of the loss increase over the eps-ball: ``eps * ||grad_x L||_*``.

    ``||.||_*`` is the dual norm of the ball (L1 for ``linf``, L2 for ``l2``); the loss is the
    per-sample cross-entropy, the model in eval mode.
    """
    check_first_order_gain(eps=eps, norm=norm)
    start = time.perf_counter()
    device, dtype = model_device_dtype(model)
    gains = []
    with preserved(model):
        for x, y in Batches(data, unit_range=True).to(device, dtype):
            x = x.clone().requires_grad_(True)
            with torch.enable_grad():
                loss = F.cross_entropy(model(x), y, reduction="sum")
                (grad,) = torch.autograd.grad(loss, x)
            gains.append(eps * grad.flatten(1).norm(p=1 if norm == "linf" else 2, dim=1).detach().cpu())
    per_sample = torch.cat(gains)
    return flatplug.Measurement("first_order_gain", float(per_sample.mean()), per_sample=per_sample,
                                details={"eps": eps, "norm": norm}, seconds=time.perf_counter() - start)


@flatplug.hookimpl
def flatplug_register_measures(register):
    register("weight_norm_sq", weight_norm_sq, version="2", zoo_defaults={"which": "weights"},
             paper="a scale-dependent baseline (Neyshabur et al. 2017, 'Exploring generalization in deep learning')")
    register("first_order_gain", first_order_gain, version="1", follows_attack=("eps", "norm"),
             check=check_first_order_gain,
             paper="the first-order term of the LFR bound (Xu et al. 2020)")
