"""Adversarial training makes the weight loss landscape sharper (Yamada et al. 2021).

Yamada et al., "Adversarial Training Makes Weight Loss Landscape Sharper in Logistic Regression"
(https://arxiv.org/abs/2102.02950), prove that L2 adversarial training of linear logistic
regression sharpens the weight loss landscape: the top eigenvalue of the Hessian of the adversarial
training loss at the trained weights grows with the adversarial radius eps; they confirm the same
on ResNet18. This script reproduces both on real data:

1. Logistic regression (scikit-learn's digits 0 vs 1 by default, or MNIST 3 vs 7 from
   ``../shared/data/mnist`` with ``--full``), labels s in {-1, +1}. For a linear score ``w.x + b`` the
   worst L2 perturbation of norm eps lowers the margin by exactly ``eps ||w||``, so adversarial
   training minimises ``R(w, b) = mean log(1 + exp(-(s (w.x + b) - eps ||w||)))`` (plus a small
   weight decay, the same for every eps, so that the separable eps = 0 problem has a finite
   minimiser); L-BFGS from zero trains each model to convergence. Measured with flatplug:

   * ``lambda_max``: the top eigenvalue of the Hessian of ``R`` itself w.r.t. ``(w, b)``
     (``fp.measures.hessian_eigenvalues`` with a ``loss_fn`` that is the closed form: the model is
     wrapped to output ``[0, w.x + b, ||w||]``, so the loss is a function of its outputs and every
     Hessian-vector product sees the ``eps ||w||`` term); ``lambda_max_frozen``: the same for the
     logistic loss on the adversarial examples frozen at the trained weights, which misses the
     curvature of ``eps ||w||`` (slightly smaller); ``lambda_max_clean``: the clean loss's;
   * the robust-loss landscape (``fp.measures.loss_landscape(..., adversarial={"eps": eps,
     "norm": "l2", "clip": None})``): along one fixed random Gaussian direction in ``(w, b)``
     (``normalization="none"``: for a linear model the weights' own scale is the quantity of
     interest), PGD re-optimises the adversarial examples at every point, so each value is ``R``
     at those weights; ``landscape_curvature`` is the second difference at the centre.

2. The paper's ResNet18 experiment scaled to a CPU: a small CNN trained on real MNIST images (from
   ``../shared``) with L2 PGD adversarial training at growing eps (``fp.train(method="pgd-at")``;
   eps = 0 is standard training), and its robust-loss landscape (PGD at the training eps re-run at
   every point) along filter-normalised random directions (Li et al. 2018), averaged over several
   directions shared by all models.

Run ``python examples/at_sharpens_weight_landscape.py --fast`` (about a minute) or ``--full``
(MNIST 3 vs 7 for part 1, more images, directions and eps for part 2). Prints two tables and
writes ``at_sharpens_weight_landscape.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
from torch import nn

import flatplug as fp
from flatplug.attacks import accuracy
from flatplug.sources import load_digits, load_mnist, to_loader

ROOT = Path(__file__).resolve().parents[1]
FAST_EPS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
FULL_EPS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5)
CNN_FAST_EPS = (0.0, 0.5, 1.0)
CNN_FULL_EPS = (0.0, 0.5, 1.0, 1.5, 2.0)


# -- 1. logistic regression ----------------------------------------------------------------------


class LinearLogit(nn.Module):
    """``x -> [0, w.x + b]``: softmax cross-entropy of these two logits is the logistic loss."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, dim, dtype=torch.float64))  # one "filter" of size dim
        self.bias = nn.Parameter(torch.zeros(1, dtype=torch.float64))

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight[0] + self.bias[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.score(x)
        return torch.stack([torch.zeros_like(z), z], dim=1)


class WithWeightNorm(nn.Module):
    """The same parameters, with ``||w||`` as a third output: ``x -> [0, w.x + b, ||w||]``.

    The adversarial training loss needs ``||w||``; as an output of the forward pass it is a function
    of the parameters that every Hessian-vector product (double backward or ``torch.func``) sees.
    """

    def __init__(self, model: LinearLogit):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.model.score(x)
        return torch.stack([torch.zeros_like(z), z, self.model.weight[0].norm().expand_as(z)], dim=1)


def adversarial_training_loss(eps: float):
    """``loss_fn(outputs, y)`` of :class:`WithWeightNorm`: ``log(1 + exp(-(s z - eps ||w||)))`` per sample."""

    def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        s = 2.0 * y.to(out.dtype) - 1.0
        return nn.functional.softplus(-(s * out[:, 1] - eps * out[:, 2]))

    return loss_fn


def adversarial_logistic_loss(model: LinearLogit, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """Mean of ``log(1 + exp(-(s (w.x + b) - eps ||w||)))``: the exact worst case over ``||delta||_2 <= eps``."""
    s = 2.0 * y.to(x.dtype) - 1.0
    w = model.weight[0]
    norm = torch.sqrt(w.pow(2).sum() + 1e-30)  # differentiable at w = 0, where training starts
    return nn.functional.softplus(-(s * model.score(x) - eps * norm)).mean()


def train_adversarial(x: torch.Tensor, y: torch.Tensor, eps: float, weight_decay: float,
                      max_iter: int) -> tuple[LinearLogit, float]:
    """Minimise the exact adversarial loss + ``weight_decay/2 ||w||^2`` by L-BFGS from w = 0, b = 0."""
    model = LinearLogit(x[0].numel())
    opt = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=max_iter, tolerance_grad=1e-10,
                            tolerance_change=1e-14, history_size=50, line_search_fn="strong_wolfe")

    def objective() -> torch.Tensor:
        opt.zero_grad()
        loss = adversarial_logistic_loss(model, x, y, eps) + 0.5 * weight_decay * model.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(objective)
    objective()
    grad_norm = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.parameters()))
    for p in model.parameters():
        p.grad = None
    model.eval()
    return model, grad_norm


def robust_accuracy_l2(model: LinearLogit, x: torch.Tensor, y: torch.Tensor, eps: float) -> float:
    """Exact L2 robust accuracy of a linear classifier: correct iff ``s (w.x + b) > eps ||w||``."""
    with torch.no_grad():
        s = 2.0 * y.to(x.dtype) - 1.0
        return float((s * model.score(x) > eps * model.weight.norm()).double().mean())


def binary_task(args) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor], str]:
    """Train and test ``(x, y)`` in float64 with labels {0, 1} for the two chosen classes."""
    a, b = args.classes
    if args.data == "digits":
        parts = [load_digits(split=split) for split in ("train", "test")]
        splits = [(p.x, p.y) for p in parts]
        name = f"scikit-learn digits {a} vs {b}"
    else:
        data = load_mnist(Path(args.shared) / "data" / "mnist")  # the 10,000 t10k images: the shared split
        keep = torch.nonzero((data.y == a) | (data.y == b)).flatten()
        perm = keep[torch.randperm(keep.numel(), generator=torch.Generator().manual_seed(args.seed))]
        cut = int(0.7 * perm.numel())
        splits = [(data.x[perm[:cut]], data.y[perm[:cut]]), (data.x[perm[cut:]], data.y[perm[cut:]])]
        name = f"MNIST (t10k) {a} vs {b}, 70/30 split"
    out = []
    for x, y in splits:
        keep = (y == a) | (y == b)
        out.append((x[keep].flatten(1).to(torch.float64), (y[keep] == b).to(torch.long)))
    return out[0], out[1], name


def curvature_from_landscape(m: fp.Measurement) -> float:
    """Second difference of the 1-D slice at its centre: ``d^T H d`` along the slice's direction."""
    losses, alphas = m.details["losses"], m.details["alphas"]
    c = len(alphas) // 2
    h = alphas[c + 1] - alphas[c]
    return (losses[c + 1] + losses[c - 1] - 2 * losses[c]) / h ** 2


def adversarial_examples(model: LinearLogit, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """The exact worst-case L2 perturbation of each sample at the trained weights: ``x - eps s w / ||w||``."""
    with torch.no_grad():
        w = model.weight[0]
        norm = float(w.norm())
        if norm == 0.0:
            return x.clone()
        s = 2.0 * y.to(x.dtype) - 1.0
        return x - eps * s[:, None] * (w / norm)


def logistic(args) -> dict:
    (x_tr, y_tr), (x_te, y_te), task = binary_task(args)
    rows, curves, params, directions = [], [], [], []
    for eps in args.eps:
        model, grad_norm = train_adversarial(x_tr, y_tr, eps, args.weight_decay, args.max_iter)
        with torch.no_grad():
            clean = float((model(x_te).argmax(1) == y_te).double().mean())
        lanczos = {"k": 1, "tol": 1e-8, "max_iter": x_tr.shape[1] + 1, "quiet": True}
        # the Hessian of the adversarial training loss itself (the closed form, through the model's outputs)
        at_loss = fp.measures.hessian_eigenvalues(WithWeightNorm(model), (x_tr, y_tr),
                                                  loss_fn=adversarial_training_loss(eps), **lanczos)
        frozen = fp.measures.hessian_eigenvalues(model, (adversarial_examples(model, x_tr, y_tr, eps), y_tr), **lanczos)
        cln = fp.measures.hessian_eigenvalues(model, (x_tr, y_tr), **lanczos)
        # the robust-loss landscape: PGD (L2, unconstrained inputs) re-run at every point of the slice
        adv = {"eps": eps, "norm": "l2", "clip": None, "random_start": False, "steps": 5, "step_size": max(eps, 1e-12)}
        land = fp.measures.loss_landscape(model, (x_tr, y_tr), steps=args.steps, span=args.span, normalization="none",
                                          include_bias_and_norm=True, seed=args.seed, adversarial=adv, quiet=True)
        rows.append({
            "eps": eps,
            "clean_acc": clean,
            "adv_acc": robust_accuracy_l2(model, x_te, y_te, eps),
            "weight_norm": float(model.weight.detach().norm()),
            "lambda_max": at_loss.value,
            "lambda_max_frozen": frozen.value,
            "lambda_max_clean": cln.value,
            "landscape_curvature": curvature_from_landscape(land),
            "landscape_rise": land.value,
            "train_grad_norm": grad_norm,
        })
        curves.append((eps, land.details["alphas"], land.details["losses"]))
        params.append({n: p.detach().clone() for n, p in model.named_parameters()})
        directions.append(land.artifacts["directions"][0])
    return {"task": task, "n_train": int(y_tr.numel()), "n_test": int(y_te.numel()), "rows": rows, "curves": curves,
            "span": args.span, "steps": args.steps,
            # tensors for callers (tests): the trained (w, b) per eps and the landscape's direction
            "params": params, "directions": directions, "train": (x_tr, y_tr)}


# -- 2. a small CNN on real MNIST (the paper's ResNet18 experiment, scaled to a CPU) --------------


def small_cnn(seed: int) -> nn.Module:
    """A 7k-parameter CNN on 14x14 (average-pooled) MNIST images."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(1, 16, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3),
                         nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 2 * 2, 10))


def cnn(args) -> dict:
    data = load_mnist(Path(args.shared) / "data" / "mnist")
    perm = torch.randperm(data.y.numel(), generator=torch.Generator().manual_seed(args.seed))
    train, held = perm[: args.cnn_train], perm[args.cnn_train: args.cnn_train + args.cnn_eval]
    x_tr, y_tr, x_ev, y_ev = data.x[train], data.y[train], data.x[held], data.y[held]
    rows, models = [], []
    for eps in args.cnn_eps:
        model = small_cnn(args.seed)
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        loader = to_loader(x_tr, y_tr, 50)
        if eps == 0:
            fp.train(model, loader, method="standard", epochs=args.cnn_epochs, optimizer=optimizer, seed=args.seed,
                     quiet=True)
        else:
            fp.train(model, loader, method="pgd-at", epochs=args.cnn_epochs, optimizer=optimizer, seed=args.seed,
                     eps=eps, norm="l2", steps=args.cnn_pgd_steps, quiet=True)
        adv = None if eps == 0 else {"eps": eps, "norm": "l2", "steps": args.cnn_pgd_steps}
        lands = [fp.measures.loss_landscape(model, (x_ev, y_ev), steps=args.cnn_steps, span=args.cnn_span,
                                            adversarial=adv, seed=1000 + k, quiet=True)
                 for k in range(args.directions)]
        rises = [m.value for m in lands]
        centre = lands[0].details["centre_loss"]
        curve = [sum(m.details["losses"][i] for m in lands) / len(lands) - centre
                 for i in range(len(lands[0].details["alphas"]))]
        mean = sum(rises) / len(rises)
        sd = math.sqrt(sum((r - mean) ** 2 for r in rises) / (len(rises) - 1)) if len(rises) > 1 else float("nan")
        rows.append({"eps": eps, "clean_acc": accuracy(model, (x_ev, y_ev)),
                     "robust_acc": lands[0].details["centre_accuracy"], "robust_loss": centre,
                     "rise": mean, "rise_std_error": sd / math.sqrt(len(rises)), "rises": rises,
                     "alphas": lands[0].details["alphas"], "curve": curve})
        models.append(model)
    return {"n_train": args.cnn_train, "n_eval": args.cnn_eval, "epochs": args.cnn_epochs,
            "pgd_steps": args.cnn_pgd_steps, "directions": args.directions, "rows": rows,
            "models": models, "eval": (x_ev, y_ev)}


# -- output --------------------------------------------------------------------------------------


def print_tables(result: dict) -> None:
    lg = result["logistic"]
    print(f"\n1. {lg['task']}: {lg['n_train']} train / {lg['n_test']} test samples; "
          "L2 adversarial training with the exact inner maximisation")
    head = (f"{'eps':>5} {'clean acc':>9} {'adv acc':>8} {'||w||':>7} {'lambda_max':>10} {'frozen':>8} "
            f"{'curvature':>10} {'rise':>8} {'clean':>8}")
    print(head)
    print("-" * len(head))
    for r in lg["rows"]:
        print(f"{r['eps']:>5.2f} {r['clean_acc']:>9.3f} {r['adv_acc']:>8.3f} {r['weight_norm']:>7.3f} "
              f"{r['lambda_max']:>10.4f} {r['lambda_max_frozen']:>8.4f} {r['landscape_curvature']:>10.4f} "
              f"{r['landscape_rise']:>8.4f} {r['lambda_max_clean']:>8.4f}")
    print("lambda_max: top eigenvalue of the Hessian w.r.t. (w, b) of the adversarial training loss itself\n"
          "  (fp.measures.hessian_eigenvalues with the closed-form loss_fn); frozen: the same for the logistic loss on\n"
          "  the adversarial examples frozen at the trained weights; curvature: second difference at the centre of the\n"
          "  robust-loss landscape along one random direction (fp.measures.loss_landscape(adversarial=...), PGD re-run\n"
          "  at every point); rise: its mean increase; clean: lambda_max of the clean loss; adv acc: exact L2 robust\n"
          "  test accuracy at the training eps")
    c = result["cnn"]
    print(f"\n2. small CNN on {c['n_train']} real MNIST images, {c['epochs']} epochs of L2 PGD-{c['pgd_steps']} "
          f"training; robust-loss landscape on {c['n_eval']} held-out images, {c['directions']} filter-normalised "
          "directions")
    head = f"{'eps':>5} {'clean acc':>9} {'robust acc':>10} {'robust loss':>11} {'mean rise':>10} {'+-':>6}"
    print(head)
    print("-" * len(head))
    for r in c["rows"]:
        print(f"{r['eps']:>5.2f} {r['clean_acc']:>9.3f} {r['robust_acc']:>10.3f} {r['robust_loss']:>11.4f} "
              f"{r['rise']:>10.4f} {r['rise_std_error']:>6.4f}")
    print("mean rise: the robust loss's mean increase over the slice (PGD at the training eps re-run at every point),\n"
          "  averaged over the directions (+-: its standard error); eps = 0 is standard training and the clean loss")


def save_figure(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4.2))
    cmap = plt.get_cmap("viridis")
    lg = result["logistic"]
    n = len(lg["curves"])
    for i, (eps, alphas, losses) in enumerate(lg["curves"]):
        centre = losses[len(losses) // 2]
        ax1.plot(alphas, [v - centre for v in losses], color=cmap(i / max(n - 1, 1)), label=f"eps={eps:g}")
    ax1.set_xlabel("step along a random Gaussian direction in (w, b)")
    ax1.set_ylabel("rise of the robust loss")
    ax1.set_title("(a) logistic regression: robust-loss landscape", fontsize=10)
    ax1.legend(fontsize="small", ncol=2)
    eps = [r["eps"] for r in lg["rows"]]
    ax2.plot(eps, [r["lambda_max"] for r in lg["rows"]], "o-", label="lambda_max (adversarial training loss)")
    ax2.plot(eps, [r["lambda_max_frozen"] for r in lg["rows"]], "x:", label="lambda_max (frozen adv. examples)")
    ax2.plot(eps, [r["landscape_curvature"] for r in lg["rows"]], "s--", label="slice curvature (robust loss)")
    ax2.plot(eps, [r["lambda_max_clean"] for r in lg["rows"]], "^:", color="0.5", label="lambda_max (clean loss)")
    ax2.set_xlabel("adversarial training eps (L2)")
    ax2.set_ylabel("curvature")
    ax2.set_yscale("log")
    ax2.set_title("(b) logistic regression: sharpness grows with eps", fontsize=10)
    ax2.legend(fontsize="small")
    c = result["cnn"]
    n = len(c["rows"])
    for i, r in enumerate(c["rows"]):
        ax3.plot(r["alphas"], r["curve"], color=cmap(i / max(n - 1, 1)),
                 label=f"eps={r['eps']:g} (robust acc {r['robust_acc']:.2f})")
    ax3.set_xlabel("step along filter-normalised random directions")
    ax3.set_ylabel("rise of the robust loss (mean over directions)")
    ax3.set_title(f"(c) small CNN on MNIST ({c['n_train']} images)", fontsize=10)
    ax3.legend(fontsize="small")
    fig.suptitle(f"Yamada et al.: adversarial training sharpens the weight loss landscape ({lg['task']}; MNIST CNN)",
                 fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--fast", action="store_true", help="digits 0 vs 1, 7 eps; CNN: 3 eps (the CI setting)")
    mode.add_argument("--full", action="store_true", help="MNIST 3 vs 7, 11 eps; CNN: 5 eps, more images and directions")
    p.add_argument("--data", choices=("digits", "mnist"), default=None, help="override the data set of part 1")
    p.add_argument("--classes", type=int, nargs=2, default=None, metavar=("A", "B"), help="the two classes")
    p.add_argument("--eps", type=float, nargs="+", default=None, help="the L2 radii to train the logistic models with")
    p.add_argument("--weight-decay", type=float, default=1e-3, help="the same L2 penalty for every eps")
    p.add_argument("--max-iter", type=int, default=500, help="L-BFGS iterations")
    p.add_argument("--steps", type=int, default=21, help="points of the logistic 1-D landscape (odd)")
    p.add_argument("--span", type=float, default=0.5, help="the logistic landscape covers [-span, span] x direction")
    p.add_argument("--cnn-eps", type=float, nargs="+", default=None, help="the L2 radii of the CNN's PGD training")
    p.add_argument("--cnn-train", type=int, default=None, help="MNIST images the CNN trains on")
    p.add_argument("--cnn-eval", type=int, default=None, help="held-out images of the CNN's landscape")
    p.add_argument("--cnn-epochs", type=int, default=8)
    p.add_argument("--cnn-pgd-steps", type=int, default=3, help="PGD steps in training and in the landscape")
    p.add_argument("--cnn-steps", type=int, default=None, help="points of the CNN's landscape (odd)")
    p.add_argument("--cnn-span", type=float, default=0.5)
    p.add_argument("--directions", type=int, default=None, help="random directions of the CNN's landscape")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads while the script runs (default 1: the models are tiny, and on a shared "
                        "2-core CPU two threads cost 10x the CPU time (218 s against 23 s for part 2), same numbers)")
    p.add_argument("--shared", default=str(ROOT.parent / "shared"), help="the shared data folder (default ../shared)")
    p.add_argument("--out", default=str(ROOT / "examples" / "out"), help="where the figure and JSON go")
    args = p.parse_args(argv)
    args.data = args.data or ("mnist" if args.full else "digits")
    args.classes = args.classes or ([3, 7] if args.data == "mnist" else [0, 1])
    args.eps = args.eps or list(FULL_EPS if args.full else FAST_EPS)
    args.cnn_eps = args.cnn_eps or list(CNN_FULL_EPS if args.full else CNN_FAST_EPS)
    args.cnn_train = args.cnn_train or (4000 if args.full else 1000)
    args.cnn_eval = args.cnn_eval or (512 if args.full else 256)
    args.cnn_steps = args.cnn_steps or (9 if args.full else 7)
    args.directions = args.directions or (16 if args.full else 8)
    if not (Path(args.shared) / "data" / "mnist").is_dir():
        p.error(f"--shared: {args.shared} has no data/mnist; pass the shared folder with --shared")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        result = {"logistic": logistic(args), "cnn": cnn(args)}
    finally:
        torch.set_num_threads(threads)
    print_tables(result)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    figure = out / "at_sharpens_weight_landscape.png"
    save_figure(result, figure)
    plain = {"logistic": {k: v for k, v in result["logistic"].items() if k not in ("params", "directions", "train")},
             "cnn": {k: v for k, v in result["cnn"].items() if k not in ("models", "eval")}}
    (out / "at_sharpens_weight_landscape.json").write_text(json.dumps(plain, indent=1))
    print(f"figure: {figure}")
    result["figure"] = str(figure)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
