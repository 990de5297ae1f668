"""TrajectoryRecorder on a real CIFAR-10 model, and the core's trajectory plot.

The recorder must not change the attack (same images, bit for bit, with the same seed), and what
it records must match quantities recomputed here independently: the loss and wrong-class
confidence by a plain forward pass, the relative flatness by ``flatplug.measures.relative_flatness``,
and the iterates by re-running PGD with fewer steps (PGD's k-step run is the prefix of its n-step run).
"""

from __future__ import annotations

import pytest

pytest.importorskip("flatplug_torchattacks")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torchattacks  # noqa: E402
from torchattacks_support import (EPS, assert_same_state, images, model, model_state, single_thread,  # noqa: E402,F401
                                  wrong_confidence)

from flatplug.measures import relative_flatness  # noqa: E402
from flatplug.trajectory_plot import plot_trajectory  # noqa: E402
from flatplug_torchattacks import FlatRegionAttack, LocalFlatnessPGD, Trajectory, TrajectoryRecorder  # noqa: E402

ATTACKS = {
    "pgd": lambda net: torchattacks.PGD(net, eps=EPS, alpha=2 / 255, steps=4),
    "pgdl2": lambda net: torchattacks.PGDL2(net, eps=0.5, alpha=0.1, steps=4),
    "fgsm": lambda net: torchattacks.FGSM(net, eps=EPS),
    "mifgsm": lambda net: torchattacks.MIFGSM(net, eps=EPS, steps=3),
    "eotpgd": lambda net: torchattacks.EOTPGD(net, eps=EPS, steps=3, eot_iter=2),
    "cw": lambda net: torchattacks.CW(net, steps=4),
    "local_flatness_pgd": lambda net: LocalFlatnessPGD(net, eps=EPS, steps=3, seed=0),
    "flat_region": lambda net: FlatRegionAttack(net, eps=EPS, steps=4),
}
#: recorded points: clean + distinct gradient evaluations + returned images
EXPECTED_STEPS = {"pgd": 4 + 2, "pgdl2": 4 + 2, "fgsm": 2, "mifgsm": 3 + 1, "eotpgd": 3 + 2, "cw": 4 + 2,
                  "local_flatness_pgd": 3 + 3, "flat_region": 4 + 3}


def _record(name, n=16):
    net = model()
    x, y = images(n)
    torch.manual_seed(0)
    alone = ATTACKS[name](net)(x, y)
    recorder = TrajectoryRecorder(ATTACKS[name](net))
    torch.manual_seed(0)
    adv = recorder(x, y)
    return net, x, y, alone, adv, recorder.record


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_recorder_returns_the_attacks_images_and_records_what_is_recomputed(name):
    net, x, y, alone, adv, record = _record(name)
    assert torch.equal(adv, alone)
    assert isinstance(record, Trajectory)
    assert record.num_steps == EXPECTED_STEPS[name]
    for key in ("loss", "confidence", "relative_flatness"):
        assert record.values[key].shape == (record.num_steps, len(y))
    with torch.no_grad():
        for step, images_at in ((0, x), (-1, adv)):
            logits = net(images_at)
            torch.testing.assert_close(record.values["loss"][step],
                                       F.cross_entropy(logits, y, reduction="none").double(), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(record.values["confidence"][step], wrong_confidence(net, images_at, y).double(),
                                       rtol=1e-5, atol=1e-6)
            kappa = relative_flatness(net, (images_at, y), quiet=True).per_sample
            torch.testing.assert_close(record.values["relative_flatness"][step], kappa.double(), rtol=1e-4, atol=1e-6)
            assert torch.equal(record.predicted[step], logits.argmax(1))


def test_recorded_pgd_iterates_are_pgds_shorter_runs():
    """PGD with k steps (same random start) ends at the k-th iterate of a longer run."""
    net, x, y, _, adv, record = _record("pgd")
    for k in range(1, 4):
        torch.manual_seed(0)
        shorter = torchattacks.PGD(net, eps=EPS, alpha=2 / 255, steps=k)(x, y)
        with torch.no_grad():
            loss = F.cross_entropy(net(shorter), y, reduction="none").double()
        torch.testing.assert_close(record.values["loss"][k + 1], loss, rtol=1e-5, atol=1e-6)  # step 1 is the start


def test_targeted_recording_uses_the_attacks_targets():
    net = model()
    x, y = images(16)
    recorder = TrajectoryRecorder(torchattacks.PGD(net, eps=EPS, steps=5))
    recorder.set_mode_targeted_by_function(lambda im, lab: (lab + 1) % 10, quiet=True)
    assert recorder.wrapped.targeted  # set_* reaches the wrapped attack
    adv = recorder(x, y)
    record = recorder.record
    target = (y + 1) % 10
    assert torch.equal(record.targets, target)
    with torch.no_grad():
        p = net(adv).softmax(1)[torch.arange(16), target].double()
    torch.testing.assert_close(record.values["confidence"][-1], p, rtol=1e-5, atol=1e-6)
    reached = (record.predicted[-1] == target)
    assert torch.equal(record.flip_step >= 0, record.flipped.any(0))
    assert bool(reached.any()) and torch.all(record.flipped[-1] == reached)


def test_flip_step_and_json():
    _, _, y, _, _, record = _record("pgd", n=8)
    wrong = record.predicted != y.view(1, -1)
    for i in range(len(y)):
        steps = torch.nonzero(wrong[:, i]).flatten()
        assert int(record.flip_step[i]) == (int(steps[0]) if len(steps) else -1)
    as_dict = record.to_dict()
    assert np.asarray(as_dict["values"]["loss"]).shape == (record.num_steps, len(y))
    assert as_dict["settings"]["steps"] == 4 and as_dict["settings"]["eps"] == EPS


def test_recorder_refuses_attacks_whose_evaluations_are_not_iterates():
    net = model()
    with pytest.raises(TypeError, match="cannot record APGD.*strict=False"):
        TrajectoryRecorder(torchattacks.APGD(net))
    with pytest.raises(TypeError, match="expected a torchattacks.Attack"):
        TrajectoryRecorder(net)
    with pytest.raises(ValueError, match="measures: expected"):
        TrajectoryRecorder(torchattacks.PGD(net), measures=("sharpness",))
    x, y = images(8)
    loose = TrajectoryRecorder(torchattacks.NIFGSM(net, steps=3), measures="loss", strict=False)
    torch.manual_seed(0)
    adv = loose(x, y)
    torch.manual_seed(0)
    assert torch.equal(adv, torchattacks.NIFGSM(net, steps=3)(x, y))
    assert set(loose.record.values) == {"loss"}


def test_recorder_leaves_the_model_and_the_wrapped_attack_as_found():
    net = model()
    x, y = images(8)
    inner = torchattacks.PGD(net, steps=2)
    before = model_state(net)
    recorder = TrajectoryRecorder(inner)
    recorder(x, y)
    assert_same_state(before, model_state(net))
    assert "get_logits" not in vars(inner) and "get_target_label" not in vars(inner)


def test_plot_trajectory_draws_the_recorded_medians(tmp_path):
    _, _, _, _, _, record = _record("flat_region", n=8)
    path = tmp_path / "trajectory.png"
    fig = plot_trajectory(record, path=path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    axes = fig.axes
    assert len(axes) == 3
    for axis, key in zip(axes, ("loss", "confidence", "relative_flatness")):
        medians = [line for line in axis.lines if line.get_label() == "median"]
        assert len(medians) == 1
        np.testing.assert_allclose(medians[0].get_ydata(), np.median(record.values[key].numpy(), axis=1))


def test_plot_trajectory_into_given_axes_and_bad_records():
    from matplotlib.figure import Figure

    fig = Figure()
    ax = fig.subplots(1, 2)
    values = {"loss": np.arange(12.0).reshape(4, 3), "confidence": np.ones((4, 3))}
    assert plot_trajectory(values, ax=ax) is fig
    assert ax[0].get_ylabel() == "loss"
    with pytest.raises(ValueError, match="ax: expected 2 axes"):
        plot_trajectory(values, ax=ax[0])
    with pytest.raises(ValueError, match="different shapes"):
        plot_trajectory({"loss": np.ones((4, 3)), "confidence": np.ones((5, 3))})
    with pytest.raises(TypeError, match="expected a Trajectory"):
        plot_trajectory([1, 2, 3])


def _bn_model():
    """A small batch-norm CNN with non-trivial running statistics (the zoo's models have no batch norm)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.Dropout(0.3), torch.nn.Flatten(), torch.nn.Linear(8 * 15 * 15, 10))
    bn = net[1]
    bn.running_mean.uniform_(-0.2, 0.2)
    bn.running_var.uniform_(0.5, 1.5)
    bn.num_batches_tracked.fill_(7)
    return net.eval()


def _bn_buffers(net):
    return [b.clone() for b in net.buffers()]


def test_recorder_in_model_training_mode_evaluates_as_the_attack_and_keeps_bn_statistics():
    """set_model_training_mode(model_training=True): the attack runs in train mode with batch norm and dropout in eval
    mode; plain PGD leaves the running statistics as they were, so must the recorder, and the recorded final point
    must be evaluated in that same mode (not with batch statistics)."""
    net = _bn_model()
    x, y = images(16)
    before = _bn_buffers(net)

    plain = torchattacks.PGD(net, eps=EPS, alpha=2 / 255, steps=3)
    plain.set_model_training_mode(model_training=True)
    torch.manual_seed(0)
    alone = plain(x, y)
    for a, b in zip(before, _bn_buffers(net)):
        assert torch.equal(a, b)  # the control: torchattacks' PGD leaves them unchanged

    recorder = TrajectoryRecorder(torchattacks.PGD(net, eps=EPS, alpha=2 / 255, steps=3))
    recorder.set_model_training_mode(model_training=True)
    torch.manual_seed(0)
    adv = recorder(x, y)
    assert torch.equal(adv, alone)
    for a, b in zip(before, _bn_buffers(net)):
        assert torch.equal(a, b)

    net.train()  # the attack's evaluation mode: train mode, batch norm and dropout in eval mode
    net[1].eval()
    net[3].eval()
    with torch.no_grad():
        for step, at in ((0, x), (-1, adv)):
            loss = F.cross_entropy(net(at), y, reduction="none").double()
            torch.testing.assert_close(recorder.record.values["loss"][step], loss, rtol=1e-5, atol=1e-6)
    net.train()
    with torch.no_grad():  # batch statistics would give other values: the check above can fail
        batch_stats = F.cross_entropy(net[4:](net[:3](adv)), y, reduction="none").double()
    assert not torch.allclose(recorder.record.values["loss"][-1], batch_stats, rtol=1e-3)
