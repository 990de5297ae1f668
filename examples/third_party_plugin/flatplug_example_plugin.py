"""A third-party flatplug plugin: registers the measure ``weight_norm_sq``.

Install it (``pip install examples/third_party_plugin``) and it is found through the
``flatplug`` entry-point group: ``fp.measure("weight_norm_sq", model, (x, y))``.
"""

import time

import flatplug


def weight_norm_sq(model, data, **params):
    """Sum of squared parameters: the simplest scale-dependent 'sharpness' proxy."""
    start = time.perf_counter()
    value = sum(float(p.detach().pow(2).sum()) for p in model.parameters())
    return flatplug.Measurement("weight_norm_sq", value, seconds=time.perf_counter() - start)


@flatplug.hookimpl
def flatplug_register_measures(register):
    register("weight_norm_sq", weight_norm_sq)
