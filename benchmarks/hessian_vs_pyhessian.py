"""Top Hessian eigenvalues: flatplug's Lanczos vs PyHessian's power iteration with deflation.

Both compute the top-k eigenvalues of the Hessian of the mean cross-entropy over one batch of
real CIFAR-10 test images, w.r.t. all parameters of the real pretrained ``resnet4b``, with the
same ``--tol``, in eval mode, on the same device, with the same threads. Each is timed as a
whole call (PyHessian: constructing ``hessian(...)``, which runs the forward and first backward,
plus ``.eigenvalues()``; flatplug: ``hessian_eigenvalues``), ``--repeats`` times interleaved,
and the medians are compared. Both also report how many Hessian-vector products they used.

Accuracy. Both are measured against one tight reference: flatplug's Lanczos at ``--ref-tol``
(default 1e-7, the default rule) on a float64 copy of the model and batch (untimed), whose
error bound is printed. A goal counts as met only when flatplug is at least as accurate as
PyHessian (largest relative error of the sorted top-k over all runs) *and* faster by the goal.

Tolerance. The same ``--tol`` goes to both. PyHessian stops the power iteration for one
eigenvalue when two successive Rayleigh quotients differ by less than ``tol`` relatively
(``|t_i - t_{i-1}| / (|t_{i-1}| + 1e-6) < tol``), or after ``maxIter`` products *per
eigenvalue*; that bounds nothing (a slow iteration changes little too). flatplug's default rule
(``stopping="residual"``) stops when the residual of *every* one of the k Ritz pairs is at most
``tol`` relative, so the a-posteriori error bound of each eigenvalue, ``min(r, r^2 / gap)`` for
residual ``r`` and gap ``gap`` to the rest of the spectrum, is too. ``--stopping`` also times
flatplug's other rules beside it (``bound``: stops as soon as that bound is at most ``tol``, a
product or two earlier, but more often on the next eigenvalue when the wanted one has not yet
emerged, see ``flatplug.lanczos``; ``change``: PyHessian's rule applied to the Ritz values); the
goals are judged on the first rule given (default: the default rule).
flatplug's ``max_iter`` is a total budget, PyHessian's ``maxIter`` one per eigenvalue.
``--fp-tol`` times flatplug at other tolerances beside it (e.g. the error PyHessian actually
reached at ``--tol``: flatplug's bound then guarantees the same accuracy); every row with the
first stopping rule is held to the goal, and meets it only if its measured error is no larger.

Which eigenvalues. Power iteration finds the eigenvalues of largest magnitude; flatplug's default
``which="largest"`` finds the algebraically largest. The script checks that the most negative
eigenvalue is smaller in magnitude than the k-th largest, so both target the same ones.
PyHessian returns its eigenvalues in the order its deflation found them: both lists are sorted.

PyHessian (Yao et al. 2020, https://github.com/amirgholami/PyHessian, MIT licence) is not a
dependency: :class:`PowerIteration` below re-implements the algorithm of its
``hessian.eigenvalues`` for one batch, written for this script (the credit for the algorithm is
PyHessian's): the constructor runs the forward pass and ``backward(create_graph=True)`` once and
keeps the gradient graph; each eigenvalue starts from a Gaussian vector (global RNG) normalised
as ``v / (||v|| + 1e-6)``, and repeats: Gram-Schmidt against the eigenvectors found so far,
``Hv`` by ``torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)``, Rayleigh
quotient ``v.Hv``, ``v <- Hv / (||Hv|| + 1e-6)``; it stops when the quotient changed by less than
``tol * (|previous| + 1e-6)`` and reports the *previous* quotient (as PyHessian does), or after
``maxIter`` products. Vectors are lists of per-parameter tensors, as in PyHessian. The global
RNG is seeded (``torch.manual_seed``) with the repeat index before each call, as flatplug gets
``seed=`` the repeat index.

On a CPU the script runs torch with one thread by default (``--threads 0``: torch's own choice):
on a small machine shared with other work, torch's default threads oversubscribe the cores.

The goal is judged on the ratio of the medians; the median of the per-round ratios (both run
back to back with the same seed in each round) is printed beside it.

    .venv/bin/python benchmarks/hessian_vs_pyhessian.py [--device cpu] [--n 128] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import copy

import torch
from torch import nn

import _common as C
from flatplug.measures import hessian_eigenvalues

GOALS = {1: 2.0, 10: 5.0}


class PowerIteration:
    """PyHessian's top-k eigenvalue algorithm for one batch (see the module docstring); own code."""

    def __init__(self, model: nn.Module, criterion, x: torch.Tensor, y: torch.Tensor) -> None:
        self.model = model.eval()
        self.params = [q for q in model.parameters() if q.requires_grad]
        loss = criterion(model(x), y)
        self.grads = torch.autograd.grad(loss, self.params, create_graph=True)
        self.count = 0

    @staticmethod
    def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
        return sum((u * v).sum() for u, v in zip(a, b))

    def _normalised(self, v: list[torch.Tensor]) -> list[torch.Tensor]:
        norm = float(self._dot(v, v)) ** 0.5
        return [t / (norm + 1e-6) for t in v]

    def _hvp(self, v: list[torch.Tensor]) -> list[torch.Tensor]:
        self.count += 1
        return list(torch.autograd.grad(self.grads, self.params, grad_outputs=v, retain_graph=True))

    def eigenvalues(self, max_iter: int, tol: float, top_n: int) -> list[float]:
        found: list[float] = []
        vectors: list[list[torch.Tensor]] = []
        while len(found) < top_n:
            v = self._normalised([torch.randn_like(q) for q in self.params])
            value = None
            for _ in range(max_iter):
                for u in vectors:  # deflation: Gram-Schmidt against the eigenvectors found so far
                    c = self._dot(v, u)
                    v = [a - c * b for a, b in zip(v, u)]
                v = self._normalised(v)
                hv = self._hvp(v)
                quotient = float(self._dot(hv, v))
                v = self._normalised(hv)
                if value is not None and abs(value - quotient) / (abs(value) + 1e-6) < tol:
                    break
                value = quotient
            found.append(value)
            vectors.append(v)
        return found


def rel_error(values: list[float], ref: list[float]) -> float:
    """Largest relative error of the sorted ``values`` against the reference's."""
    return max(abs(u - v) / abs(v) for u, v in zip(values, ref))


def main() -> None:
    p = C.parser(__doc__.splitlines()[0], repeats=5, n=128, threads=1)
    p.add_argument("--k", type=int, nargs="+", default=[1, 10], help="numbers of top eigenvalues to compare")
    p.add_argument("--tol", type=float, default=1e-3, help="relative tolerance passed to both")
    p.add_argument("--max-iter", type=int, default=100,
                   help="PyHessian's maxIter (per eigenvalue) and flatplug's max_iter (in all)")
    p.add_argument("--stopping", nargs="+", default=["residual", "bound", "change"],
                   choices=["bound", "residual", "change"],
                   help="flatplug stopping rules to time (the first one is held to the goals)")
    p.add_argument("--fp-tol", type=float, nargs="+", default=None,
                   help="flatplug tolerances to time with the first stopping rule (default: --tol); e.g. the "
                        "error PyHessian reached at --tol, to compare at equal accuracy")
    p.add_argument("--tight-tol", type=float, default=0.0,
                   help="also time PyHessian at this tighter tolerance (0: skip; slow for k=10 on a CPU)")
    p.add_argument("--ref-tol", type=float, default=1e-7, help="tolerance of the untimed reference (default rule)")
    p.add_argument("--ref-dtype", default="float64", choices=["float64", "float32"],
                   help="dtype of the untimed reference's model and batch")
    args = p.parse_args()
    device = C.setup(args)

    model = C.load_model(args, device)
    x, y = C.load_cifar(args, "test", args.n)
    x, y = x.to(device), y.to(device)
    criterion = nn.CrossEntropyLoss()  # mean over the batch: the same loss flatplug uses
    dim = sum(q.numel() for q in model.parameters())

    C.header("top-k Hessian eigenvalues: flatplug (Lanczos) vs PyHessian (power iteration)", args, device,
             pyhessian="PyHessian's power iteration with deflation, re-implemented (own code)",
             hessian=f"mean cross-entropy over the batch w.r.t. all {dim} parameters; tol={args.tol:g}, "
                     f"max_iter={args.max_iter}")

    def run_flatplug(k: int, seed: int, stopping: str, tol: float):
        m = hessian_eigenvalues(model, (x, y), k=k, tol=tol, max_iter=args.max_iter, seed=seed, quiet=True,
                                stopping=stopping)
        return sorted(m.details["eigenvalues"], reverse=True), m.details["hvp_count"]

    def run_pyhessian(k: int, seed: int, tol: float):
        torch.manual_seed(seed)
        h = PowerIteration(model, criterion, x, y)
        eigenvalues = h.eigenvalues(max_iter=args.max_iter, tol=tol, top_n=k)
        count = h.count
        del h
        return sorted(eigenvalues, reverse=True), count

    # --- the untimed reference -------------------------------------------------------------------
    kmax = max(args.k)
    dtype = getattr(torch, args.ref_dtype)
    ref_model = copy.deepcopy(model).to(dtype)
    ref_data = (x.to(dtype), y)
    ref_m = hessian_eigenvalues(ref_model, ref_data, k=kmax, tol=args.ref_tol, max_iter=max(300, 30 * kmax),
                                seed=12345, quiet=True)
    ref = sorted(ref_m.details["eigenvalues"], reverse=True)
    ref_bound = max(b / abs(t) for b, t in zip(ref_m.details["error_bounds"], ref_m.details["eigenvalues"]))
    smallest = hessian_eigenvalues(ref_model, ref_data, k=1, tol=1e-4, max_iter=300, which="smallest",
                                   quiet=True).value
    del ref_model
    print()
    print(f"reference (flatplug, {args.ref_dtype}, tol={args.ref_tol:g}, untimed): top-{kmax} = "
          + ", ".join(f"{v:.7g}" for v in ref) + f"; largest relative error bound {ref_bound:.1e} "
          f"({ref_m.details['stop_reason']}, {ref_m.details['hvp_count']} products)")
    same = abs(smallest) < ref[-1]
    print(f"most negative eigenvalue {smallest:.4g} vs the {kmax}th largest {ref[-1]:.4g}: largest-magnitude "
          f"(PyHessian) and largest (flatplug) are {'the same' if same else 'NOT the same'} eigenvalues")

    # --- timed, interleaved ------------------------------------------------------------------------
    rows, verdicts = [], []
    cpu: dict[str, list[float]] = {}
    for i, k in enumerate(args.k):
        fp_tols = args.fp_tol or [args.tol]
        fp_names = {f"flatplug k={k} stopping={args.stopping[0]} tol={t:g}": (args.stopping[0], t) for t in fp_tols}
        fp_names.update({f"flatplug k={k} stopping={s} tol={args.tol:g}": (s, args.tol) for s in args.stopping[1:]})
        ph_name = f"pyhessian k={k}"
        methods = {name: (lambda r, s=st: run_flatplug(k, r, *s)) for name, st in fp_names.items()}
        methods[ph_name] = lambda r: run_pyhessian(k, r, args.tol)
        if args.tight_tol:
            methods[f"pyhessian k={k} tol={args.tight_tol:g}"] = lambda r: run_pyhessian(k, r, args.tight_tol)
        # one untimed warm-up call of each, before the first k only (a k=10 PyHessian call is long on a CPU)
        times, results = C.interleaved(methods, args.repeats, device, warmup=i == 0, cpu=cpu)
        errors = {name: [rel_error(run[0], ref[:k]) for run in runs] for name, runs in results.items()}
        for name, runs in results.items():
            rows.append(C.time_cpu_row(name, times[name], cpu[name])
                        + [C.median([run[1] for run in runs]), f"{C.median(errors[name]):.1e}", f"{max(errors[name]):.1e}"])
        for name in fp_names:
            speed = C.median(times[ph_name]) / C.median(times[name])
            cpu_speed = C.median(cpu[ph_name]) / C.median(cpu[name])
            # same seed, same round: the per-round ratios are less exposed to drift in the machine's speed
            paired = sorted(p / f for p, f in zip(times[ph_name], times[name]))
            accurate = max(errors[name]) <= max(errors[ph_name])
            verdicts.append((k, name, speed, paired, cpu_speed, accurate, max(errors[name]), max(errors[ph_name]),
                             fp_names[name][0] == args.stopping[0]))

    print()
    print("timings (wall-clock seconds per call), products and accuracy (relative error of the sorted top-k "
          "against the reference, median and max over the runs):")
    print(C.table((*C.CPU_HEADERS, "median HVPs", "median err", "max err"), rows))
    print()
    for k, name, speed, paired, cpu_speed, accurate, err, ph_err, held in verdicts:
        acc = f"max error {err:.1e} vs PyHessian's {ph_err:.1e}: {'as accurate or better' if accurate else 'LESS accurate'}"
        if held and k in GOALS:
            goal = f"goal >= {GOALS[k]:.0f}x at equal or better accuracy: {C.verdict(accurate and speed >= GOALS[k])}"
        else:
            goal = "no goal (shown beside)" if k in GOALS else "no goal for this k"
        print(f"k={k}: {name} vs pyhessian (tol={args.tol:g}): speed-up {speed:.2f}x (CPU time {cpu_speed:.2f}x; "
              f"median of per-round ratios {C.median(paired):.2f}x, rounds {paired[0]:.2f}-{paired[-1]:.2f}x); "
              f"{acc}; {goal}")
    print("HVPs: Hessian-vector products per call (besides them each builds the batch's gradient graph once).")
    C.footer()


if __name__ == "__main__":
    main()
