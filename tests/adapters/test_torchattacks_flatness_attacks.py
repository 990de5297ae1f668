"""LocalFlatnessPGD and FlatRegionAttack on a real CIFAR-10 model: what they promise, checked independently.

* LocalFlatnessPGD's points have an input-gradient norm >= the clean one (recomputed by plain
  autograd here), and larger on average: the ascent works;
* FlatRegionAttack's examples have lower relative flatness (flatplug.measures.relative_flatness,
  a path independent of the attack's own loss) and higher wrong-class confidence than PGD's at
  the same eps, steps and step size;
* both behave like torchattacks attacks: MultiAttack, set_normalization_used, model modes,
  targeted modes; and they reject bad input that torchattacks 3.5 would silently clamp.
"""

from __future__ import annotations

import pytest

pytest.importorskip("flatplug_torchattacks")

import torch  # noqa: E402
import torchattacks  # noqa: E402
from torchattacks_support import (EPS, accuracy, assert_same_state, images, input_grad_norms, model,  # noqa: E402,F401
                                  model_state, single_thread, wrong_confidence, zoo)

from flatplug import plugins  # noqa: E402
from flatplug.measures import relative_flatness  # noqa: E402
from flatplug_torchattacks import FlatRegionAttack, LocalFlatnessPGD, TrajectoryRecorder  # noqa: E402


def _linf(a, b):
    return float((a - b).abs().flatten(1).amax(1).max())


# -- LocalFlatnessPGD -------------------------------------------------------------------------
@pytest.mark.parametrize("q,norm,eps", [(1, "Linf", EPS), (2, "Linf", EPS), (2, "L2", 0.5)])
def test_local_flatness_pgd_raises_the_input_gradient_norm(q, norm, eps):
    net = model()
    x, y = images(16)
    attack = LocalFlatnessPGD(net, eps=eps, steps=5, q=q, norm=norm, seed=0)
    adv = attack(x, y)
    clean = input_grad_norms(net, x, y, q)
    found = input_grad_norms(net, adv, y, q)
    assert torch.all(found >= clean * (1 - 1e-5))
    assert float(found.mean()) > 1.2 * float(clean.mean())
    torch.testing.assert_close(attack.last_grad_norms, found, rtol=1e-4, atol=1e-6)
    size = (adv - x).flatten(1).abs().amax(1) if norm == "Linf" else (adv - x).flatten(1).norm(dim=1)
    assert float(size.max()) <= eps * (1 + 1e-5) + 1e-6
    assert float(adv.min()) >= 0 and float(adv.max()) <= 1


def test_local_flatness_pgd_is_deterministic_given_a_seed_and_untargeted_only():
    net = model()
    x, y = images(8)
    a = LocalFlatnessPGD(net, steps=3, seed=5)(x, y)
    b = LocalFlatnessPGD(net, steps=3, seed=5)(x, y)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="Targeted mode is not supported"):
        LocalFlatnessPGD(net).set_mode_targeted_random(quiet=True)


# -- FlatRegionAttack -------------------------------------------------------------------------
def test_flat_region_examples_are_flatter_and_more_confidently_wrong_than_pgd():
    net = model()
    x, y = images(32)
    torch.manual_seed(0)
    pgd = torchattacks.PGD(net, eps=EPS, alpha=2 / 255, steps=10)(x, y)
    torch.manual_seed(0)
    flat = FlatRegionAttack(net, eps=EPS, alpha=2 / 255, steps=10)(x, y)
    assert _linf(flat, x) <= EPS + 1e-6
    # at least as successful as PGD (it runs PGD until the label flips)
    assert accuracy(net, flat, y) <= accuracy(net, pgd, y)
    # relative flatness measured by the core measure, not by the attack's loss
    kappa_pgd = relative_flatness(net, (pgd, y), quiet=True).per_sample
    kappa_flat = relative_flatness(net, (flat, y), quiet=True).per_sample
    conf_pgd, conf_flat = wrong_confidence(net, pgd, y), wrong_confidence(net, flat, y)
    assert float(kappa_flat.mean()) < float(kappa_pgd.mean())
    assert float(conf_flat.mean()) > float(conf_pgd.mean())
    # sample by sample, for most of them (over seeds 0-2: 28-29 and 23-26 of the 32)
    assert int((kappa_flat < kappa_pgd).sum()) >= 0.6 * len(y)
    assert int((conf_flat > conf_pgd).sum()) >= 0.6 * len(y)


def test_flat_region_targeted_mode_aims_at_the_target():
    net = model()
    x, y = images(16)
    attack = FlatRegionAttack(net, eps=EPS, steps=10)
    attack.set_mode_targeted_by_label(quiet=True)
    target = (y + 3) % 10
    torch.manual_seed(0)
    adv = attack(x, target)  # targeted(label) mode: the labels given are the targets
    with torch.no_grad():
        hit = net(adv).argmax(1) == target
        p_target = net(adv).softmax(1)[torch.arange(len(y)), target]
        p_clean = net(x).softmax(1)[torch.arange(len(y)), target]
    assert float(hit.float().mean()) >= 0.5
    assert float(p_target.mean()) > float(p_clean.mean())


def test_flat_region_least_likely_mode_aims_at_the_least_likely_other_class():
    """torchattacks' targeted(least-likely) mode: the target is the class of smallest logit among the
    classes other than the label (Attack.get_least_likely_label, kth_min=1), recomputed here from
    the model's logits; the attack raises that class's probability."""
    net = model()
    x, y = images(16)
    attack = FlatRegionAttack(net, eps=EPS, steps=10)
    attack.set_mode_targeted_least_likely(quiet=True)
    with torch.no_grad():
        logits = net(x)
    expected = logits.scatter(1, y[:, None], float("inf")).argmin(1)
    assert torch.equal(attack.get_target_label(x, y), expected)
    torch.manual_seed(0)
    adv = attack(x, y)  # the labels given are the true labels; the attack picks its targets
    with torch.no_grad():
        p_adv = net(adv).softmax(1)[torch.arange(len(y)), expected]
    p_clean = logits.softmax(1)[torch.arange(len(y)), expected]
    assert float(p_adv.mean()) > 10 * float(p_clean.mean())


def test_save_writes_the_examples_the_attack_returns(tmp_path):
    """torchattacks' Attack.save over a DataLoader: the file holds the adversarial images (as the
    attack returns them for the same seed) and the labels, the robust accuracy it returns is the
    accuracy on those images, and the model is left as found."""
    net = model()
    x, y = images(8)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    before = model_state(net)
    attack = LocalFlatnessPGD(net, steps=3, seed=5)
    rob, _, _ = attack.save(loader, save_path=str(tmp_path / "adv.pt"), verbose=False, return_verbose=True)
    assert_same_state(before, model_state(net))
    saved = torch.load(tmp_path / "adv.pt")
    expected = torch.cat([LocalFlatnessPGD(net, steps=3, seed=5)(x[i:i + 4], y[i:i + 4]) for i in (0, 4)])
    assert torch.equal(saved["labels"], y)
    torch.testing.assert_close(saved["adv_inputs"], expected, rtol=0, atol=0)
    assert rob == pytest.approx(100 * accuracy(net, expected, y))


# -- behaving like torchattacks ---------------------------------------------------------------
def test_multiattack_of_pgd_and_local_flatness_pgd():
    net = model()
    x, y = images(16)
    pgd = torchattacks.PGD(net, eps=EPS, steps=3)
    torch.manual_seed(0)
    alone = pgd(x, y)
    multi = torchattacks.MultiAttack([pgd, LocalFlatnessPGD(net, eps=EPS, steps=3, seed=0)])
    torch.manual_seed(0)
    adv = multi(x, y)
    assert adv.shape == x.shape and _linf(adv, x) <= EPS + 1e-6
    assert float(adv.min()) >= 0 and float(adv.max()) <= 1
    # samples PGD fooled keep PGD's image; the rest got LocalFlatnessPGD's
    with torch.no_grad():
        fooled = net(alone).argmax(1) != y
    assert torch.equal(adv[fooled], alone[fooled])
    assert accuracy(net, adv, y) <= accuracy(net, alone, y)


#: a zoo model with a non-trivial normalisation (marabou_small's is mean 0, std 1)
NORMALISED = "sdp_cnn_a_adv"


def _normalized_pair():
    """(bare network, the same network with Normalize inside, mean, std)."""
    entry = zoo().entry(NORMALISED)
    assert entry["mean"] != [0.0, 0.0, 0.0] and entry["std"] != [1.0, 1.0, 1.0]
    inside = model(NORMALISED)
    bare = inside[1:]  # the zoo model is Normalize followed by the network's layers
    return bare, inside, entry["mean"], entry["std"]


MAKERS = {
    "pgd": lambda net: torchattacks.PGD(net, eps=EPS, steps=3),
    "local_flatness_pgd": lambda net: LocalFlatnessPGD(net, eps=EPS, steps=3),
    "flat_region": lambda net: FlatRegionAttack(net, eps=EPS, steps=3),
    "recorder": lambda net: TrajectoryRecorder(FlatRegionAttack(net, eps=EPS, steps=3)),
}


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_set_normalization_used_matches_a_model_that_normalises_inside(name):
    bare, inside, mean, std = _normalized_pair()
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    x, y = images(8)
    x_norm = (x - m) / s  # torchattacks 3.5: with set_normalization_used, inputs and outputs are normalised
    on_bare = MAKERS[name](bare)
    on_bare.set_normalization_used(mean, std)
    torch.manual_seed(0)
    adv_bare = on_bare(x_norm, y) * s + m
    torch.manual_seed(0)
    adv_inside = MAKERS[name](inside)((x_norm * s + m).clamp(0, 1), y)  # the images the attack works on
    torch.testing.assert_close(adv_bare, adv_inside, rtol=0, atol=1e-5)
    assert _linf(adv_inside, x) <= EPS + 1e-5


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_the_model_is_left_as_found_and_train_mode_is_restored(name):
    net = model()
    x, y = images(8)
    net.train()
    try:
        before = model_state(net)
        seen = []
        handle = net.register_forward_pre_hook(lambda mod, inp: seen.append(mod.training))
        before["hooks"][0] += 1
        MAKERS[name](net)(x, y)
        handle.remove()
        after = model_state(net)
        after["hooks"][0] += 1
        assert_same_state(before, after)
        assert seen and not any(seen)  # attacked in eval mode, like torchattacks' default
        attack = MAKERS[name](net)
        attack.set_model_training_mode(model_training=True)
        seen.clear()
        handle = net.register_forward_pre_hook(lambda mod, inp: seen.append((mod.training, torch.is_grad_enabled())))
        attack(x, y)
        handle.remove()
        # the attack's gradient passes run in train mode (the input checks' no-grad passes in eval mode)
        with_grad = [training for training, grad in seen if grad]
        assert with_grad and all(with_grad)
        assert all(mod.training for mod in net.modules())
    finally:
        net.eval()


# -- bad input --------------------------------------------------------------------------------
BAD = [
    (lambda x, y: (x * 255, y), ValueError, r"expected images in \[0, 1\], got min .* max .*divide by 255"),
    (lambda x, y: (x - 0.5, y), ValueError, r"expected images in \[0, 1\]"),
    (lambda x, y: (x.index_put((torch.tensor([0]),), torch.tensor(float("nan"))), y), ValueError, "non-finite"),
    (lambda x, y: (x.index_put((torch.tensor([1]),), torch.tensor(float("inf"))), y), ValueError, "non-finite"),
    (lambda x, y: (x, y[:-1]), ValueError, r"7 labels for 8 inputs"),
    (lambda x, y: (x, y.float()), TypeError, "integer class labels"),
    (lambda x, y: (x, torch.nn.functional.one_hot(y, 10)), ValueError, r"shape \[N\].*argmax"),
    (lambda x, y: (x, y + 10), ValueError, r"labels must lie in 0..9"),
    (lambda x, y: (x, None), ValueError, "got None"),
    (lambda x, y: ((x * 255).to(torch.uint8), y), TypeError, "floating-point"),
]
#: this adapter's attacks, and torchattacks' PGD as registered (torchattacks.PGD itself clamps silently)
BAD_MAKERS = {**{k: v for k, v in MAKERS.items() if k != "pgd"},
              "registered_pgd": lambda net: plugins.get("attacks", "pgd")(net, steps=1)}


@pytest.mark.parametrize("name", sorted(BAD_MAKERS))
@pytest.mark.parametrize("case", range(len(BAD)))
def test_bad_input_is_a_clear_error(name, case):
    spoil, error, message = BAD[case]
    x, y = images(8)
    bad_x, bad_y = spoil(x, y)
    attack = BAD_MAKERS[name](model())
    with pytest.raises(error, match=message):
        attack(bad_x, bad_y)


def test_the_class_count_probe_runs_on_two_images_and_reports_a_bad_output_shape():
    """The label-range check learns the number of classes from a no-grad pass over the first two
    images only (not a whole extra forward pass per call); a model ending in ``squeeze()`` still
    gives ``[2, classes]`` there, and a model that returns no class dimension is a clear error."""
    net = model()
    sizes = []
    handle = net.register_forward_pre_hook(lambda mod, inp: sizes.append((inp[0].shape[0], torch.is_grad_enabled())))
    x, y = images(8)
    LocalFlatnessPGD(net, steps=1)(x, y)
    handle.remove()
    assert (2, False) in sizes and (8, False) not in sizes

    class Squeezed(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, t):
            return self.inner(t).squeeze()

    assert LocalFlatnessPGD(Squeezed(net), steps=1)(x, y).shape == x.shape

    class Flat(Squeezed):
        def forward(self, t):
            return self.inner(t)[:, 0]

    with pytest.raises(ValueError, match=r"expected the model to return logits of shape \[2, classes\], got \(2,\)"):
        LocalFlatnessPGD(Flat(net), steps=1)(x, y)


def test_out_of_range_images_with_set_normalization_used_are_a_clear_error():
    bare, _, mean, std = _normalized_pair()
    x, y = images(4)
    attack = FlatRegionAttack(bare, steps=1)
    attack.set_normalization_used(mean, std)
    with pytest.raises(ValueError, match="after undoing the normalisation set with set_normalization_used"):
        attack(x * 255, y)  # raw pixel values where normalised images are expected


def test_bad_settings_are_clear_errors():
    net = model()
    with pytest.raises(ValueError, match="eps: expected a non-negative finite number"):
        FlatRegionAttack(net, eps=-1)
    with pytest.raises(ValueError, match="norm: expected 'Linf' or 'L2'"):
        LocalFlatnessPGD(net, norm="l1")
    with pytest.raises(ValueError, match="q: expected"):
        LocalFlatnessPGD(net, q=3)
    with pytest.raises(ValueError, match="variant: expected one of"):
        FlatRegionAttack(net, variant="nope")
    with pytest.raises(ValueError, match="layer: the model has no module named"):
        FlatRegionAttack(net, layer="classifier")
    with pytest.raises(TypeError, match="layer: '0' is a Conv2d"):
        FlatRegionAttack(net, layer="0")
