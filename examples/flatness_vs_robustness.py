"""When flatness does (not) guarantee adversarial robustness (Walter et al. 2025), on real CIFAR-10 models.

Walter et al. 2025, "When Flatness Does (Not) Guarantee Adversarial Robustness", show that relative
flatness of the penultimate layer (Petzka et al. 2021) bounds the change of the loss only in a
neighbourhood of the input: it is no certificate of robustness, and adversarial examples end up in
flat regions where the model is confidently wrong. Three experiments on the shared CIFAR-10 zoo
(``../shared/models/zoo.json``) and CIFAR-10 test images (``../shared/data/cifar10/test.tar.gz``):

(a) score the zoo with ``fp.score`` (relative flatness and PGD robust accuracy, into a results store
    in ``--out``) and report the rank correlation of relative flatness with robust accuracy
    (``flatplug.report.correlations``);
(b) multiply the weights and bias of one model's last ``nn.Linear`` by s: the argmax, hence the
    clean accuracy and every decision, is unchanged, so the model is exactly as robust as before.
    Yet relative flatness moves with s, and so does PGD's robust accuracy (at large s the softmax
    saturates in float32 and PGD's gradients vanish). Per image, flatness is reported as the
    median and the mean over the images: the mean grows like s^2 only because a few images near the
    decision boundary keep a non-saturated softmax (``top3_share``: the fraction of the sum those
    three images carry), while the median, the typical image, falls to zero as PGD's accuracy
    rises. The s grid runs past the point where flatness collapses. Adversarial examples computed
    at s = 1 and transferred to the scaled models fool them all the same: flatness here is not
    robustness;
(c) along a PGD trajectory (many small steps, a large eps), record per step the loss, the largest
    wrong-class probability and the per-sample relative flatness of the iterates: relative flatness
    rises until the label flips, then falls, and the final examples are confidently wrong;
(d) from input space to feature space (``fp.measures.feature_displacement``): for PGD of growing
    eps, the relative displacement ``||phi(x') - phi(x)|| / ||phi(x)||`` of the penultimate
    features, how well the second-order Taylor prediction in feature space (the regime relative
    flatness controls) predicts the loss change, the per-image relative flatness before and after,
    and how many attacked images are confidently wrong: local, not global.

Run ``python examples/flatness_vs_robustness.py --fast`` (6 models, 100 images, about a minute on a
CPU) or ``--full`` (all 16 models on 1,000 images; add ``--device cuda`` on a GPU). Prints four
tables and writes ``flatness_vs_robustness.png`` and ``flatness_vs_robustness_trajectory.png``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import flatplug as fp
from flatplug.attacks import pgd, robust_accuracy
from flatplug.report import correlations, summary_table
from flatplug.scoring import DatasetSpec, ModelSpec, parse_eps
from flatplug.sources import ZooSource, load_imagefolder

ROOT = Path(__file__).resolve().parents[1]
FAST_MODELS = ("marabou_small", "marabou_large", "sdp_cnn_a_adv", "oval_base", "wong_small_8px", "resnet2b")
SCALES = (0.25, 0.5, 1.0, 2.0, 4.0, 10.0, 100.0, 1000.0, 10000.0)
LINK_EPS = ("1/1020", "1/255", "4/255", "16/255")  # 0.25/255 ... 16/255


# -- (a) the zoo --------------------------------------------------------------------------------


def score_zoo(args) -> dict:
    manifest = Path(args.shared) / "models" / "zoo.json"
    names = args.models or (list(FAST_MODELS) if args.fast else ZooSource(manifest).names("cifar10"))
    specs = [ModelSpec.of("zoo", name, manifest=str(manifest)) for name in names]
    data = DatasetSpec("imagefolder", str(Path(args.shared) / "data" / "cifar10" / "test.tar.gz"), n=args.n,
                       seed=args.seed)
    store = Path(args.out) / "flatness_vs_robustness.db"
    frame = fp.score(specs, data, measures=["relative_flatness"],
                     attack={"name": "pgd", "eps": args.eps, "steps": args.pgd_steps},
                     store=str(store), device=args.device, quiet=args.quiet)
    table = summary_table(frame)
    robust = [c for c, m in table.attrs["columns"].items() if m["kind"] == "attack"]
    if len(robust) != 1:
        raise RuntimeError(f"expected one robust-accuracy column, got {robust}")
    corr = correlations(table, "relative_flatness", robust[0], n_boot=1000, seed=args.seed)
    models = [{"model": r["model"], "clean_acc": r["clean_accuracy"], "robust_acc": r[robust[0]],
               "relative_flatness": r["relative_flatness"]} for _, r in table.iterrows()]
    failures = [f"{r['model']}: {r['failures']}" for _, r in table.iterrows() if r["failures"]]
    return {"store": str(store), "robust_column": robust[0], "models": models, "failures": failures,
            "spearman": corr.spearman, "spearman_ci": list(corr.spearman_ci), "kendall": corr.kendall,
            "kendall_ci": list(corr.kendall_ci), "n_models": corr.n}


# -- (b) scaling the last layer ------------------------------------------------------------------


def last_linear(model: nn.Module) -> nn.Linear:
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def scale_last_layer(model: nn.Module, s: float) -> nn.Module:
    """A copy of ``model`` whose last Linear computes ``s (W phi + b)``: the same argmax for s > 0."""
    scaled = copy.deepcopy(model)
    layer = last_linear(scaled)
    with torch.no_grad():
        layer.weight.mul_(s)
        if layer.bias is not None:
            layer.bias.mul_(s)
    return scaled.eval()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def scaling(args, x: torch.Tensor, y: torch.Tensor) -> dict:
    manifest = Path(args.shared) / "models" / "zoo.json"
    base = ZooSource(manifest).load(args.scale_model, device=args.device).module.eval()
    x, y = x.to(args.device), y.to(args.device)
    x_adv = pgd(base, x, y, eps=args.eps, steps=args.pgd_steps, seed=args.seed)  # crafted once, at s = 1
    rows = []
    for s in args.scales:
        model = scale_last_layer(base, s)
        kappa = fp.measures.relative_flatness(model, (x, y), quiet=True)
        per = kappa.per_sample.double()
        total = float(per.sum())
        rows.append({
            "s": s,
            "clean_acc": accuracy(model, x, y),
            "relative_flatness": kappa.value,  # the mean over the images
            "rf_median": float(per.median()),
            "top3_share": float(per.sort(descending=True).values[:3].sum() / total) if total > 0 else math.nan,
            "pgd_acc": robust_accuracy(model, (x, y), eps=args.eps, steps=args.pgd_steps, seed=args.seed),
            "transfer_acc": accuracy(model, x_adv, y),
        })
    return {"model": args.scale_model, "n": int(y.numel()), "rows": rows}


# -- (c) along a PGD trajectory ------------------------------------------------------------------


def pgd_trajectory(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, step_size: float,
                   steps: int) -> dict:
    """L-inf PGD from x (no random start), recording every iterate's loss, wrong-class confidence,
    prediction and per-sample relative flatness (step 0 is the clean input)."""
    rec: dict[str, list] = {"loss": [], "confidence": [], "relative_flatness": [], "prediction": []}
    delta = torch.zeros_like(x)
    for t in range(steps + 1):
        xs = x + delta
        with torch.no_grad():
            logits = model(xs)
            p = logits.softmax(1)
            rec["loss"].append(F.cross_entropy(logits, y, reduction="none"))
            rec["confidence"].append(p.scatter(1, y[:, None], 0.0).max(1).values)  # largest wrong-class probability
            rec["prediction"].append(logits.argmax(1))
        rec["relative_flatness"].append(fp.measures.relative_flatness(model, (xs, y), quiet=True).per_sample)
        if t == steps:
            break
        delta.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x + delta), y, reduction="none").sum(), delta)
        delta = (delta.detach() + step_size * grad.sign()).clamp(-eps, eps)  # a signed step, onto the ball
        delta = (x + delta).clamp(0, 1) - x  # and into [0, 1]
    out = {k: torch.stack([v.detach().cpu().double() for v in vals]).numpy() for k, vals in rec.items()}
    wrong = out.pop("prediction") != y.cpu().numpy()[None]
    out["flip_step"] = np.where(wrong.any(0), wrong.argmax(0), -1)  # first wrong step; -1: never flips
    out["final"] = xs.detach()
    return out


def trajectory(args, x: torch.Tensor, y: torch.Tensor) -> dict:
    manifest = Path(args.shared) / "models" / "zoo.json"
    model = ZooSource(manifest).load(args.traj_model, device=args.device).module.eval()
    x, y = x.to(args.device), y.to(args.device)
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    x, y = x[correct][: args.traj_n], y[correct][: args.traj_n]  # start from correctly classified images
    rec = pgd_trajectory(model, x, y, eps=args.traj_eps, step_size=args.traj_step_size, steps=args.traj_steps)
    flip = rec["flip_step"]
    idx = np.nonzero(flip > 0)[0]
    rf = rec["relative_flatness"]
    at_flip = rf[flip[idx], idx]
    summary = {
        "model": args.traj_model, "n": int(y.numel()), "flipped": int(idx.size),
        "eps": args.traj_eps, "step_size": args.traj_step_size, "steps": args.traj_steps,
        "median_flip_step": float(np.median(flip[idx])) if idx.size else math.nan,
        "rf_start": float(np.median(rf[0, idx])), "rf_at_flip": float(np.median(at_flip)),
        "rf_final": float(np.median(rf[-1, idx])),
        "frac_flip_above_start": float(np.mean(at_flip > rf[0, idx])),
        "frac_flip_above_final": float(np.mean(at_flip > rf[-1, idx])),
        "median_peak_minus_flip": float(np.median(rf[:, idx].argmax(0) - flip[idx])),
        "confidence_final": float(np.median(rec["confidence"][-1, idx])),
        "frac_final_confident": float(np.mean(rec["confidence"][-1, idx] > 0.9)),
        "median_curves": {k: np.median(rec[k][:, idx], axis=1).tolist() for k in ("loss", "confidence",
                                                                                 "relative_flatness")},
    }
    return {"summary": summary, "record": rec, "inputs": (x.cpu(), y.cpu())}


# -- (d) from input space to feature space ------------------------------------------------------


def link(args, x: torch.Tensor, y: torch.Tensor) -> dict:
    """``fp.measures.feature_displacement`` of the trajectory model under PGD at each eps of ``--link-eps``."""
    manifest = Path(args.shared) / "models" / "zoo.json"
    model = ZooSource(manifest).load(args.traj_model, device=args.device).module.eval()
    x, y = x[: args.link_n].to(args.device), y[: args.link_n].to(args.device)
    rows = []
    for eps in args.link_eps:
        m = fp.measures.feature_displacement(model, (x, y), eps=eps, steps=args.pgd_steps, seed=args.seed, quiet=True)
        d = m.details
        wrong = d["wrong_adv"]
        rows.append({"eps": eps, **{k: d[k] for k in ("median_displacement", "median_taylor_relative_error",
                                                       "median_kappa_clean", "median_kappa_adv", "robust_accuracy",
                                                       "median_confidence_wrong", "median_loss_change")},
                     "confident_wrong_frac": d["confident_wrong"] / wrong if wrong else math.nan})
    return {"model": args.traj_model, "n": int(y.numel()), "steps": args.pgd_steps, "rows": rows}


# -- output --------------------------------------------------------------------------------------


def print_tables(res: dict, args) -> None:
    a = res["zoo"]
    print(f"\n(a) CIFAR-10 zoo, {args.n} test images, PGD-{args.pgd_steps} at eps={args.eps:.4g} (store: {a['store']})")
    print(f"{'model':<22} {'clean':>6} {'robust':>7} {'rel. flatness':>14}")
    for m in sorted(a["models"], key=lambda m: m["relative_flatness"]):
        print(f"{m['model']:<22} {m['clean_acc']:>6.3f} {m['robust_acc']:>7.3f} {m['relative_flatness']:>14.2f}")
    print(f"Spearman rho(relative flatness, robust acc) = {a['spearman']:+.3f} "
          f"[{a['spearman_ci'][0]:+.2f}, {a['spearman_ci'][1]:+.2f}], Kendall tau = {a['kendall']:+.3f} over "
          f"{a['n_models']} models")
    for f in a["failures"]:
        print(f"  failed: {f}")
    b = res["scaling"]
    print(f"\n(b) {b['model']}: last layer scaled by s ({b['n']} images, eps={args.eps:.4g}); transfer = "
          "PGD examples from s = 1; relative flatness per image: median and mean, and the share of the sum the "
          "3 largest images carry")
    print(f"{'s':>7} {'clean':>6} {'median RF':>10} {'mean RF':>10} {'top-3 share':>12} {'PGD acc':>8} "
          f"{'transfer acc':>13}")
    for r in b["rows"]:
        print(f"{r['s']:>7g} {r['clean_acc']:>6.3f} {r['rf_median']:>10.4g} {r['relative_flatness']:>10.4g} "
              f"{r['top3_share']:>12.3f} {r['pgd_acc']:>8.3f} {r['transfer_acc']:>13.3f}")
    c = res["trajectory"]["summary"]
    print(f"\n(c) {c['model']}: PGD trajectory, eps={c['eps']:.4g}, {c['steps']} steps of {c['step_size']:.4g}, "
          f"{c['n']} correctly classified images, {c['flipped']} flip (median at step {c['median_flip_step']:g})")
    print(f"{'':<28} {'start':>9} {'at flip':>9} {'final':>9}")
    print(f"{'median relative flatness':<28} {c['rf_start']:>9.3g} {c['rf_at_flip']:>9.3g} {c['rf_final']:>9.3g}")
    print(f"at the flip, relative flatness is above its start value for {c['frac_flip_above_start']:.0%} and above "
          f"its final value for {c['frac_flip_above_final']:.0%} of the flipped images; median peak step - flip "
          f"step = {c['median_peak_minus_flip']:g}")
    print(f"final wrong-class confidence: median {c['confidence_final']:.3f}, above 0.9 for "
          f"{c['frac_final_confident']:.0%}")
    d = res["link"]
    print(f"\n(d) {d['model']}: PGD-{d['steps']} (L-inf) on {d['n']} images, fp.measures.feature_displacement; "
          "medians over the images")
    print(f"{'eps':>8} {'feature displ.':>14} {'Taylor err':>10} {'RF clean':>9} {'RF attacked':>11} {'robust acc':>10} "
          f"{'conf. wrong':>11} {'loss change':>11}")
    for r in d["rows"]:
        print(f"{r['eps'] * 255:>6.3g}/255 {r['median_displacement']:>14.3f} {r['median_taylor_relative_error']:>10.3f} "
              f"{r['median_kappa_clean']:>9.3g} {r['median_kappa_adv']:>11.3g} {r['robust_accuracy']:>10.3f} "
              f"{r['confident_wrong_frac']:>11.2f} {r['median_loss_change']:>11.3g}")
    print("feature displ.: ||phi(x') - phi(x)|| / ||phi(x)||; Taylor err: relative error of the second-order prediction "
          "of the\n  loss change in feature space; RF: per-image relative flatness; conf. wrong: fraction of the "
          "misclassified attacked\n  images with confidence above 0.9")


def save_figures(res: dict, out: Path, args) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from flatplug.trajectory_plot import plot_trajectory

    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    axes = axes.ravel()
    a = res["zoo"]
    ax = axes[0]
    for m in a["models"]:
        ax.scatter(m["relative_flatness"], m["robust_acc"], color="C0")
        ax.annotate(m["model"], (m["relative_flatness"], m["robust_acc"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("relative flatness (lower = flatter)")
    ax.set_ylabel(f"PGD robust accuracy (eps={args.eps:.3g})")
    ax.set_title(f"(a) zoo: Spearman rho = {a['spearman']:+.2f} ({a['n_models']} models)", fontsize=10)
    ax.grid(alpha=0.3)
    b = res["scaling"]
    s = [r["s"] for r in b["rows"]]
    ax = axes[1]
    ax.plot(s, [r["pgd_acc"] for r in b["rows"]], "o-", color="C3", label="PGD robust accuracy")
    ax.plot(s, [r["transfer_acc"] for r in b["rows"]], "s--", color="C2", label="transfer from s=1")
    ax.plot(s, [r["clean_acc"] for r in b["rows"]], ":", color="0.5", label="clean accuracy")
    ax.set_xscale("log")
    ax.set_xlabel("last-layer scale s")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    twin = ax.twinx()
    positive = [v for r in b["rows"] for v in (r["relative_flatness"], r["rf_median"]) if v > 0]
    floor = min(positive) / 10 if positive else 1e-3
    for key, style, color, label in (("relative_flatness", "^-", "C0", "relative flatness (mean)"),
                                     ("rf_median", "v--", "C4", "relative flatness (median)")):
        values = [r[key] for r in b["rows"]]
        twin.plot(s, [v if v > 0 else np.nan for v in values], style, color=color, label=label)
        zeros = [x for x, v in zip(s, values) if v <= 0]
        twin.plot(zeros, [floor] * len(zeros), "x", color=color, ms=9)  # exactly 0: a saturated softmax
    twin.set_yscale("log")
    twin.set_ylabel("relative flatness per image (x: exactly 0)", color="C0")
    lines = ax.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize="small", loc="upper left")
    ax.set_title(f"(b) {b['model']}: same decisions, different flatness", fontsize=10)
    c = res["trajectory"]["summary"]
    ax = axes[2]
    steps = np.arange(len(c["median_curves"]["relative_flatness"]))
    ax.plot(steps, c["median_curves"]["relative_flatness"], color="C0", label="relative flatness (median)")
    ax.set_xlabel("PGD step")
    ax.set_ylabel("relative flatness", color="C0")
    ax.axvline(c["median_flip_step"], color="C3", ls="--", label="label flips (median)")
    twin = ax.twinx()
    twin.plot(steps, c["median_curves"]["confidence"], color="C1", label="wrong-class confidence (median)")
    twin.set_ylabel("wrong-class confidence", color="C1")
    twin.set_ylim(0, 1.02)
    lines, more = ax.get_legend_handles_labels(), twin.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize="small", loc="center right")
    ax.set_title(f"(c) {c['model']}: along PGD (eps={c['eps']:.3g})", fontsize=10)
    d = res["link"]
    ax = axes[3]
    eps = [r["eps"] * 255 for r in d["rows"]]
    ax.plot(eps, [r["median_displacement"] for r in d["rows"]], "o-", color="C0", label="feature displacement (median)")
    ax.plot(eps, [r["median_taylor_relative_error"] for r in d["rows"]], "s--", color="C3",
            label="2nd-order prediction error (median)")
    ax.plot(eps, [r["median_kappa_adv"] / r["median_kappa_clean"] for r in d["rows"]], "^:", color="C2",
            label="relative flatness attacked / clean (medians)")
    ax.plot(eps, [r["confident_wrong_frac"] for r in d["rows"]], "d-.", color="C1",
            label="misclassified with confidence > 0.9")
    ax.set_xscale("log")
    ax.set_xlabel("PGD eps (x 1/255)")
    ax.set_title(f"(d) {d['model']}: from input to feature space ({d['n']} images)", fontsize=10)
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    fig.suptitle("Walter et al. 2025: when flatness does (not) guarantee adversarial robustness", fontsize=11)
    fig.tight_layout()
    main_fig = out / "flatness_vs_robustness.png"
    fig.savefig(main_fig, dpi=120)
    plt.close(fig)
    rec = res["trajectory"]["record"]
    traj_fig = out / "flatness_vs_robustness_trajectory.png"
    plot_trajectory({"loss": rec["loss"], "confidence": rec["confidence"],
                     "relative_flatness": rec["relative_flatness"], "flip_step": rec["flip_step"]}, traj_fig)
    return [main_fig, traj_fig]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--fast", action="store_true", help="6 zoo models, 100 images, a short trajectory (the CI setting)")
    mode.add_argument("--full", action="store_true", help="all 16 CIFAR-10 zoo models on 1,000 images")
    p.add_argument("--models", default=None, help="comma-separated zoo models for (a) (default: by mode)")
    p.add_argument("--n", type=int, default=None, help="test images (default 100 fast / 1000 full)")
    p.add_argument("--eps", default="8/255", help="L-inf radius of PGD in (a) and (b)")
    p.add_argument("--pgd-steps", type=int, default=10)
    p.add_argument("--scale-model", default="marabou_medium", help="the zoo model of (b)")
    p.add_argument("--scales", type=float, nargs="+", default=list(SCALES))
    p.add_argument("--traj-model", default="marabou_medium", help="the zoo model of (c)")
    p.add_argument("--traj-eps", default="16/255")
    p.add_argument("--traj-step-size", default="1/255")
    p.add_argument("--traj-steps", type=int, default=None, help="PGD steps of (c) (default 30 fast / 60 full)")
    p.add_argument("--traj-n", type=int, default=None, help="images of (c) (default 50 fast / 200 full)")
    p.add_argument("--link-eps", nargs="+", default=list(LINK_EPS), help="PGD radii of (d)")
    p.add_argument("--link-n", type=int, default=None, help="images of (d) (default 50 fast / 500 full)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shared", default=str(ROOT.parent / "shared"), help="the shared folder (default ../shared)")
    p.add_argument("--out", default=str(ROOT / "examples" / "out"))
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    args.fast = not args.full
    args.models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    args.n = args.n or (100 if args.fast else 1000)
    args.eps = parse_eps(args.eps)
    args.traj_eps, args.traj_step_size = parse_eps(args.traj_eps), parse_eps(args.traj_step_size)
    args.traj_steps = args.traj_steps or (30 if args.fast else 60)
    args.traj_n = args.traj_n or (50 if args.fast else 200)
    args.link_n = args.link_n or (50 if args.fast else 500)
    args.link_eps = [parse_eps(e) for e in args.link_eps]
    if not (Path(args.shared) / "models" / "zoo.json").is_file():
        p.error(f"--shared: {args.shared} has no models/zoo.json; pass the shared folder with --shared")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    x, y = load_imagefolder(Path(args.shared) / "data" / "cifar10" / "test.tar.gz", n=args.n, seed=args.seed)
    res = {"zoo": score_zoo(args), "scaling": scaling(args, x, y), "trajectory": trajectory(args, x, y),
           "link": link(args, x, y)}
    print_tables(res, args)
    figures = save_figures(res, out, args)
    plain = {"zoo": res["zoo"], "scaling": res["scaling"], "trajectory": res["trajectory"]["summary"],
             "link": res["link"]}
    (out / "flatness_vs_robustness.json").write_text(json.dumps(plain, indent=1))
    print("figures: " + ", ".join(map(str, figures)))
    res["figures"] = [str(f) for f in figures]
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
