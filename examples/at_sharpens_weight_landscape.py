"""Adversarial training makes the weight loss landscape sharper (Yamada et al. 2021).

Yamada et al., "Adversarial Training Makes Weight Loss Landscape Sharper in Logistic Regression"
(arXiv:2102.02950), prove that L2 adversarial training of linear logistic regression sharpens the
weight loss landscape: the top eigenvalue of the loss Hessian at the trained weights grows with
the adversarial radius eps. This script reproduces that on real data (scikit-learn's digits, or
MNIST from ``../shared/data/mnist`` with ``--full``):

* a binary task (digits 0 vs 1 by default), labels s in {-1, +1};
* for each eps, the exact adversarially trained linear model: for a linear score ``w.x + b`` the
  worst L2 perturbation of norm eps lowers the margin by exactly ``eps ||w||``, so the inner
  maximisation has the closed form ``log(1 + exp(-(s (w.x + b) - eps ||w||)))`` (the bias is not
  perturbed). The objective (plus a small weight decay, the same for every eps, so that the
  separable eps = 0 problem has a finite minimiser) is convex; L-BFGS from the same zero start
  trains every model to convergence;
* the model as an ``nn.Module`` with the two logits ``[0, w.x + b]``, so the standard
  cross-entropy is exactly the clean logistic loss, measured with flatplug:
  ``fp.measures.hessian_eigenvalues`` (the top eigenvalue of the clean-loss Hessian w.r.t.
  ``(w, b)``) and ``fp.measures.loss_landscape`` (a 1-D slice along one fixed random Gaussian
  direction, ``normalization="none"``: for a linear model the weights' own scale is the
  quantity of interest, and filter normalisation would rescale the direction by ``||w||``,
  which differs by an order of magnitude between the models compared here).

Run ``python examples/at_sharpens_weight_landscape.py --fast`` (seconds) or ``--full`` (MNIST 3 vs
7, a finer eps grid). Prints a table and writes ``at_sharpens_weight_landscape.png`` to ``--out``.
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
from flatplug.sources import load_digits, load_mnist

ROOT = Path(__file__).resolve().parents[1]
FAST_EPS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
FULL_EPS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5)


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
    loss = objective()
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
        folder = Path(args.shared) / "data" / "mnist"
        data = load_mnist(folder)  # the 10,000 t10k images: the shared folder has only this split
        x_all, y_all = data.x, data.y
        keep = torch.nonzero((y_all == a) | (y_all == b)).flatten()
        perm = keep[torch.randperm(keep.numel(), generator=torch.Generator().manual_seed(args.seed))]
        cut = int(0.7 * perm.numel())
        splits = [(x_all[perm[:cut]], y_all[perm[:cut]]), (x_all[perm[cut:]], y_all[perm[cut:]])]
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
    """The exact worst-case L2 perturbation of each sample: ``x - eps s w / ||w||``."""
    with torch.no_grad():
        w = model.weight[0]
        norm = float(w.norm())
        if norm == 0.0:
            return x.clone()
        s = 2.0 * y.to(x.dtype) - 1.0
        return x - eps * s[:, None] * (w / norm)


def run(args) -> dict:
    (x_tr, y_tr), (x_te, y_te), task = binary_task(args)
    rows, curves, params, directions = [], [], [], []
    for eps in args.eps:
        model, grad_norm = train_adversarial(x_tr, y_tr, eps, args.weight_decay, args.max_iter)
        x_adv = adversarial_examples(model, x_tr, y_tr, eps)
        with torch.no_grad():
            clean = float((model(x_te).argmax(1) == y_te).double().mean())
        # the weight loss landscape of adversarial training: the loss on the training set's exact
        # adversarial examples (fixed at the trained weights), as a function of the weights
        adv = fp.measures.hessian_eigenvalues(model, (x_adv, y_tr), k=1, tol=1e-8, max_iter=x_tr.shape[1] + 1, quiet=True)
        cln = fp.measures.hessian_eigenvalues(model, (x_tr, y_tr), k=1, tol=1e-8, max_iter=x_tr.shape[1] + 1, quiet=True)
        land = fp.measures.loss_landscape(model, (x_adv, y_tr), steps=args.steps, span=args.span, normalization="none",
                                          include_bias_and_norm=True, seed=args.seed, quiet=True)
        rows.append({
            "eps": eps,
            "clean_acc": clean,
            "adv_acc": robust_accuracy_l2(model, x_te, y_te, eps),
            "weight_norm": float(model.weight.detach().norm()),
            "lambda_max": adv.value,
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


def print_table(result: dict) -> None:
    print(f"\n{result['task']}: {result['n_train']} train / {result['n_test']} test samples; "
          "L2 adversarial training with the exact inner maximisation")
    head = (f"{'eps':>5} {'clean acc':>9} {'adv acc':>8} {'||w||':>7} {'lambda_max':>10} {'curvature':>10} "
            f"{'rise':>8} {'lambda_max(clean)':>17}")
    print(head)
    print("-" * len(head))
    for r in result["rows"]:
        print(f"{r['eps']:>5.2f} {r['clean_acc']:>9.3f} {r['adv_acc']:>8.3f} {r['weight_norm']:>7.3f} "
              f"{r['lambda_max']:>10.4f} {r['landscape_curvature']:>10.4f} {r['landscape_rise']:>8.4f} "
              f"{r['lambda_max_clean']:>17.4f}")
    print("lambda_max: top eigenvalue of the Hessian w.r.t. (w, b) of the logistic loss on the exact adversarial\n"
          "  training examples (fp.measures.hessian_eigenvalues); curvature: second difference at the centre of the\n"
          "  1-D slice of the same loss along one random direction (fp.measures.loss_landscape); rise: the slice's\n"
          "  mean loss increase; lambda_max(clean): the same eigenvalue for the loss on the clean training set;\n"
          "  adv acc: exact L2 robust test accuracy at the training eps")


def save_figure(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    cmap = plt.get_cmap("viridis")
    n = len(result["curves"])
    for i, (eps, alphas, losses) in enumerate(result["curves"]):
        centre = losses[len(losses) // 2]
        ax1.plot(alphas, [v - centre for v in losses], color=cmap(i / max(n - 1, 1)), label=f"eps={eps:g}")
    ax1.set_xlabel("step along a random Gaussian direction in (w, b)")
    ax1.set_ylabel("loss rise on the adversarial examples")
    ax1.set_title("1-D weight loss landscape")
    ax1.legend(fontsize="small", ncol=2)
    eps = [r["eps"] for r in result["rows"]]
    ax2.plot(eps, [r["lambda_max"] for r in result["rows"]], "o-", label="lambda_max (Hessian)")
    ax2.plot(eps, [r["landscape_curvature"] for r in result["rows"]], "s--", label="slice curvature")
    ax2.plot(eps, [r["lambda_max_clean"] for r in result["rows"]], "^:", color="0.5", label="lambda_max (clean loss)")
    ax2.set_xlabel("adversarial training eps (L2)")
    ax2.set_ylabel("curvature")
    ax2.set_yscale("log")
    ax2.set_title("sharpness grows with eps")
    ax2.legend(fontsize="small")
    fig.suptitle(f"Yamada et al.: adversarial training sharpens the weight landscape ({result['task']})", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--fast", action="store_true", help="digits 0 vs 1, 7 eps values (the CI setting, seconds)")
    mode.add_argument("--full", action="store_true", help="MNIST 3 vs 7 from --shared, 11 eps values (under a minute)")
    p.add_argument("--data", choices=("digits", "mnist"), default=None, help="override the data set")
    p.add_argument("--classes", type=int, nargs=2, default=None, metavar=("A", "B"), help="the two classes")
    p.add_argument("--eps", type=float, nargs="+", default=None, help="the L2 radii to train with")
    p.add_argument("--weight-decay", type=float, default=1e-3, help="the same L2 penalty for every eps")
    p.add_argument("--max-iter", type=int, default=500, help="L-BFGS iterations")
    p.add_argument("--steps", type=int, default=21, help="points of the 1-D landscape (odd)")
    p.add_argument("--span", type=float, default=0.5, help="the landscape covers [-span, span] x direction")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shared", default=str(ROOT.parent / "shared"), help="the shared data folder (default ../shared)")
    p.add_argument("--out", default=str(ROOT / "examples" / "out"), help="where the figure and JSON go")
    args = p.parse_args(argv)
    args.data = args.data or ("mnist" if args.full else "digits")
    args.classes = args.classes or ([3, 7] if args.data == "mnist" else [0, 1])
    args.eps = args.eps or list(FULL_EPS if args.full else FAST_EPS)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    result = run(args)
    print_table(result)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    figure = out / "at_sharpens_weight_landscape.png"
    save_figure(result, figure)
    plain = {k: v for k, v in result.items() if k not in ("params", "directions", "train")}
    (out / "at_sharpens_weight_landscape.json").write_text(json.dumps(plain, indent=1))
    print(f"figure: {figure}")
    result["figure"] = str(figure)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
