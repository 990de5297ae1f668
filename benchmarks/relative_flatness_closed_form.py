"""Relative flatness: the softmax-cross-entropy closed form vs the exact autograd Hessian.

``flatplug.measures.relative_flatness(exact=False)`` computes Petzka et al.'s kappa_Tr from the
per-sample closed form; ``exact=True`` builds the Hessian of the mean loss w.r.t. the head's
weight matrix with autograd (the slow reference). This script checks that both give the same
value and times them, on a model with a 512x10 head and 256 real test images.

The model is built from real parts: the pretrained ``resnet4b`` of the shared zoo cut after its
``Flatten`` (a 512-d feature vector), followed by a fresh 512x10 linear head fitted by
L2-regularised logistic regression (L-BFGS) on those features of real CIFAR-10 training images.

Two timings are reported: the whole measure call (feature extraction through the trunk
included, which both paths share) and the core computation on the captured features
(``closed_form`` vs ``exact_from_hessian``), which is where the two paths differ.

A third part measures relative flatness *inside scoring* on the zoo model itself (issue 16: its
cost above one forward pass <= 20%): ``fp.score(..., measures=["relative_flatness"])`` on
``--score-n`` real CIFAR-10 test images, where clean accuracy and relative flatness share one
forward pass; the cost is the scoring rows' own seconds (clean accuracy, which runs the shared
forward pass, plus relative flatness), against a plain ``torch.no_grad()`` forward pass over the
same images in the same batches, interleaved. The attack row scoring always adds is kept
trivial (PGD, ``eps=0``, one step) and is not counted. The standalone measure call
(``fp.measures.relative_flatness``, which does its own forward pass) is timed beside it.

On a CPU the script runs torch with one thread by default (``--threads 0``: torch's own choice):
on a small machine shared with other work, torch's default threads oversubscribe the cores and
make every timing several times slower and far noisier; both methods always get the same threads.

    .venv/bin/python benchmarks/relative_flatness_closed_form.py [--device cpu] [--repeats 5] [--threads 1] [--score-n 1000]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import _common as C
import flatplug as fp
from flatplug.measures import relative_flatness
from flatplug.measures.relative_flatness import closed_form, exact_from_hessian

GOAL = 100.0
SCORING_GOAL = 0.20  # relative flatness inside scoring: cost above one forward pass


def trunk_at_flatten(model: nn.Sequential) -> nn.Sequential:
    """The model's layers up to and including its first ``nn.Flatten`` (the feature extractor)."""
    layers = []
    for child in model.children():
        layers.append(child)
        if isinstance(child, nn.Flatten):
            return nn.Sequential(*layers)
    raise SystemExit("--model: this model has no nn.Flatten to cut at; pick a zoo model like resnet4b")


def fit_head(phi: torch.Tensor, y: torch.Tensor, classes: int, *, l2: float, steps: int) -> nn.Linear:
    """A linear head ``phi -> logits`` by L2-regularised multinomial logistic regression (L-BFGS)."""
    head = nn.Linear(phi.shape[1], classes).to(phi.device, phi.dtype)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=steps, history_size=20,
                            tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(head(phi), y) + 0.5 * l2 * head.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    head.weight.grad = None
    head.bias.grad = None
    return head.requires_grad_(True)


def main() -> None:
    p = C.parser(__doc__.splitlines()[0], repeats=5, n=256, threads=1)
    p.add_argument("--train", type=int, default=1000, help="CIFAR-10 training images used to fit the head")
    p.add_argument("--l2", type=float, default=1e-2, help="L2 penalty (0.5 * l2 * ||W||^2) of the head's fit")
    p.add_argument("--fit-steps", type=int, default=300, help="L-BFGS iterations of the head's fit")
    p.add_argument("--score-n", type=int, default=1000, help="CIFAR-10 test images for the scoring part (0: skip)")
    p.add_argument("--batch-size", type=int, default=128, help="scoring's batch size (its CPU default)")
    args = p.parse_args()
    device = C.setup(args)

    zoo_model = C.load_model(args, device)
    trunk = trunk_at_flatten(zoo_model)
    x_train, y_train = C.load_cifar(args, "train", args.train)
    x_test, y_test = C.load_cifar(args, "test", args.n)
    with torch.no_grad():
        phi_train = trunk(x_train.to(device))
    head = fit_head(phi_train, y_train.to(device), 10, l2=args.l2, steps=args.fit_steps)
    model = nn.Sequential(trunk, head).eval()
    with torch.no_grad():
        acc_train = float((model(x_train.to(device)).argmax(1).cpu() == y_train).float().mean())
        acc_test = float((model(x_test.to(device)).argmax(1).cpu() == y_test).float().mean())
        acc_zoo = float((zoo_model(x_test.to(device)).argmax(1).cpu() == y_test).float().mean())

    C.header(
        "relative flatness: closed form vs exact autograd Hessian", args, device,
        head=(f"{head.in_features}x{head.out_features} Linear on {args.model}'s flatten features, fitted on "
              f"{args.train} CIFAR-10 train images (L-BFGS, {args.fit_steps} its, l2={args.l2:g}); "
              f"accuracy train {acc_train:.3f}, test {acc_test:.3f} (the zoo model's own head: {acc_zoo:.3f})"),
        hessian=f"w.r.t. the head's {head.weight.numel()} weights ({head.weight.numel()}^2 entries)",
    )
    data = (x_test, y_test)

    # --- values: both variants, float32 and float64 -------------------------------------------
    rows = []
    worst = {}
    for dtype in (torch.float32, torch.float64):
        m = nn.Sequential(trunk, head).to(dtype).eval()  # .to() is in place: cast back below
        for variant in ("pairwise", "trace"):
            closed = relative_flatness(m, data, variant=variant, quiet=True).value
            exact = relative_flatness(m, data, variant=variant, exact=True, quiet=True).value
            rel = abs(closed - exact) / abs(exact)
            worst[dtype] = max(worst.get(dtype, 0.0), rel)
            rows.append([str(dtype).replace("torch.", ""), variant, f"{closed:.10g}", f"{exact:.10g}", f"{rel:.2e}"])
        model.to(torch.float32)
    print()
    print("values (256 test images unless --n says otherwise):")
    print(C.table(("dtype", "variant", "closed form", "exact Hessian", "rel. diff"), rows))
    print(f"agreement: float32 max rel. diff {worst[torch.float32]:.2e} (goal <= 1e-4: "
          f"{C.verdict(worst[torch.float32] <= 1e-4)}); float64 {worst[torch.float64]:.2e}")

    # --- timings (float32, default variant) ---------------------------------------------------
    model.to(torch.float32)
    cpu: dict[str, list[float]] = {}
    core_cpu: dict[str, list[float]] = {}
    times, _ = C.interleaved({
        "measure, closed form (exact=False)": lambda r: relative_flatness(model, data, quiet=True).value,
        "measure, exact Hessian (exact=True)": lambda r: relative_flatness(model, data, exact=True, quiet=True).value,
    }, args.repeats, device, number={"measure, closed form (exact=False)": 5}, cpu=cpu)

    with torch.no_grad():
        phi = trunk(x_test.to(device))
    w, b, y = head.weight.detach(), head.bias.detach(), y_test.to(device)
    core, _ = C.interleaved({
        "core, closed form": lambda r: float(closed_form(phi, w, b).mean()),
        "core, exact Hessian": lambda r: exact_from_hessian(phi, w, b, y, variant="pairwise"),
    }, args.repeats, device, number={"core, closed form": 100}, cpu=core_cpu)

    print()
    print("timings (float32, variant='pairwise'; wall-clock seconds per call; the closed form's samples "
          "are means over 5 (measure) and 100 (core) back-to-back calls):")
    all_cpu = {**cpu, **core_cpu}
    print(C.table(C.CPU_HEADERS, [C.time_cpu_row(k, v, all_cpu[k]) for k, v in {**times, **core}.items()]))
    t_closed, t_exact = (C.median(v) for v in times.values())
    c_closed, c_exact = (C.median(v) for v in core.values())
    ratio, core_ratio = t_exact / t_closed, c_exact / c_closed
    cpu_ratio = C.median(cpu["measure, exact Hessian (exact=True)"]) / C.median(cpu["measure, closed form (exact=False)"])
    core_cpu_ratio = C.median(core_cpu["core, exact Hessian"]) / C.median(core_cpu["core, closed form"])
    print(f"speed-up of the closed form, whole measure call: {ratio:.1f}x (CPU time {cpu_ratio:.1f}x; goal >= "
          f"{GOAL:.0f}x: {C.verdict(ratio >= GOAL)}); the trunk's forward pass over the images, shared by both "
          f"paths, is most of the closed form's {t_closed:.3g} s")
    print(f"speed-up of the closed form, core computation on the features: {core_ratio:.0f}x "
          f"(CPU time {core_cpu_ratio:.0f}x; goal >= {GOAL:.0f}x: {C.verdict(core_ratio >= GOAL)})")
    if args.score_n:
        scoring_cost(args, device, zoo_model)
    C.footer()


def scoring_cost(args, device: torch.device, model: nn.Module) -> None:
    """Relative flatness inside ``fp.score`` (shared forward pass) vs one plain forward pass."""
    x, y = C.load_cifar(args, "test", args.score_n)
    x, y = x.to(device), y.to(device)
    batches = [(x[i:i + args.batch_size], y[i:i + args.batch_size]) for i in range(0, len(y), args.batch_size)]
    loaded = fp.LoadedModel(args.model, model, "cifar10", metadata={"source": "bench"})
    attack = {"name": "pgd", "eps": 0.0, "steps": 1}
    tmp = tempfile.TemporaryDirectory()

    def plain_forward(r: int) -> None:
        with torch.no_grad():
            for xb, _ in batches:
                model(xb)

    def scored(r: int) -> dict[str, float]:
        frame = fp.score([loaded], ("cifar10", x, y), measures=["relative_flatness"], attack=attack,
                         store=Path(tmp.name) / f"run{r}-{len(list(Path(tmp.name).iterdir()))}.db",
                         device=str(device), batch_size=args.batch_size, quiet=True)
        rows = {f"{k}:{n}": float(s) for k, n, s in zip(frame["kind"], frame["name"], frame["seconds"])}
        return {"rows": rows["accuracy:clean"] + rows["measure:relative_flatness"],
                "relative_flatness": rows["measure:relative_flatness"]}

    def standalone(r: int) -> float:
        return relative_flatness(model, batches, quiet=True).value

    cpu: dict[str, list[float]] = {}
    times, results = C.interleaved({"plain forward pass": plain_forward, "fp.score (whole call)": scored,
                                     "relative_flatness measure call": standalone}, args.repeats, device, cpu=cpu)
    tmp.cleanup()
    rows_s = [r["rows"] for r in results["fp.score (whole call)"]]
    rf_s = [r["relative_flatness"] for r in results["fp.score (whole call)"]]
    print()
    print(f"relative flatness inside scoring: {args.model}, {args.score_n} CIFAR-10 test images, batch "
          f"{args.batch_size} (wall-clock seconds):")
    table_rows = [C.time_cpu_row(k, v, cpu[k]) for k, v in times.items()]
    table_rows.append(["  scoring rows: clean accuracy (shared forward) + relative flatness", C.median(rows_s),
                       min(rows_s), max(rows_s), len(rows_s), ""])
    table_rows.append(["  of which the relative flatness row", C.median(rf_s), min(rf_s), max(rf_s), len(rf_s), ""])
    print(C.table(C.CPU_HEADERS, table_rows))
    forward = C.median(times["plain forward pass"])
    extra = C.median(rows_s) / forward - 1.0
    alone = C.median(times["relative_flatness measure call"]) / forward - 1.0
    print(f"cost of relative flatness inside scoring above one forward pass: {extra:+.1%} (goal <= "
          f"{SCORING_GOAL:.0%}: {C.verdict(extra <= SCORING_GOAL)}); the standalone measure call: {alone:+.1%}")


if __name__ == "__main__":
    main()
