"""Top Hessian eigenvalues: flatplug's Lanczos vs PyHessian's power iteration with deflation.

Both compute the top-k eigenvalues of the Hessian of the mean cross-entropy over one batch of
real CIFAR-10 test images, w.r.t. all parameters of the real pretrained ``resnet4b``, with the
same tolerance, in eval mode, on the same device, with the same threads. Each is timed as a
whole call (PyHessian: constructing ``hessian(...)``, which runs the forward and first backward,
plus ``.eigenvalues()``; flatplug: ``hessian_eigenvalues``), ``--repeats`` times interleaved,
and the medians are compared. Both also report how many Hessian-vector products they used.

Tolerance. PyHessian stops the power iteration for one eigenvalue when two successive Rayleigh
quotients differ by less than ``tol`` relatively (``|t_i - t_{i-1}| / (|t_{i-1}| + 1e-6) < tol``),
or after ``maxIter`` products *per eigenvalue*. flatplug stops when *every* one of the k Ritz
pairs has a relative residual ``||H v - t v|| <= tol |t|``, or after ``max_iter`` products *in
all*. Both are relative, and the same number is passed to both. The residual test is the
stricter one: a residual bounds the eigenvalue error (|lambda - t| <= residual, and <= residual^2
/ gap once the gap is resolved), whereas a small change between power iterations does not (it
is small too when the iteration is merely slow). So at equal ``tol`` flatplug does at least the
work the test demands, and its budget (100 products in all, against PyHessian's 100 per
eigenvalue) is never larger. To show what each tolerance buys, both are compared with a
tight reference: flatplug at ``--ref-tol`` (untimed), whose residuals bound its own error; and
PyHessian is timed once more at ``--tight-tol`` (default 1e-4), to show how its cost and its
error change with a tighter stopping test (reported beside, not counted for the goals).

Which eigenvalues. Power iteration finds the eigenvalues of largest magnitude; flatplug's default
``which="largest"`` finds the algebraically largest. On this model and batch the most negative
eigenvalue is far smaller in magnitude than the 10th largest, so both target the same ones; the
script checks this (``which="smallest"`` for k=1) and says so. PyHessian returns its eigenvalues
in the order its deflation found them: both lists are sorted before comparing.

PyHessian 0.1 runs unchanged on torch 2.14. The script only wraps its module-level
``hessian_vector_product`` (the function its ``eigenvalues`` calls for a single batch) in a
counter, to report how many products it used, and silences torch's warning about
``backward(create_graph=True)`` that PyHessian's constructor triggers. PyHessian draws its start
vectors from the global RNG: it is seeded (``torch.manual_seed``) with the repeat index before
each call, as flatplug gets ``seed=`` the repeat index. After each PyHessian call the ``.grad``
fields it leaves on the model (holding the gradient graph) are cleared.

On a CPU the script runs torch with one thread by default (``--threads 0``: torch's own choice):
on a small machine shared with other work, torch's default threads oversubscribe the cores and
make every timing several times slower and far noisier; both methods always get the same threads.

Install PyHessian into the venv first (only needed for this benchmark; it does not change torch):
    PIP_CONSTRAINT=constraints.txt .venv/bin/pip install pyhessian
    .venv/bin/python benchmarks/hessian_vs_pyhessian.py [--device cpu] [--n 128] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import importlib.metadata
import sys
import warnings

import torch
from torch import nn

import _common as C
from flatplug.measures import hessian_eigenvalues

GOALS = {1: 2.0, 10: 5.0}
AGREE = 0.01


def pyhessian_module():
    """PyHessian's ``hessian`` module (its package re-exports the class under the same name)."""
    try:
        import pyhessian  # noqa: F401
    except ImportError:
        sys.exit("pyhessian is not installed: PIP_CONSTRAINT=constraints.txt .venv/bin/pip install pyhessian")
    return sys.modules["pyhessian.hessian"]


class CountingHVP:
    """Wraps PyHessian's ``hessian_vector_product`` to count calls (it computes nothing else)."""

    def __init__(self, module) -> None:
        self.module = module
        self.original = module.hessian_vector_product
        self.count = 0
        module.hessian_vector_product = self

    def __call__(self, *args, **kwargs):
        self.count += 1
        return self.original(*args, **kwargs)


def main() -> None:
    p = C.parser(__doc__.splitlines()[0], repeats=3, n=128, threads=1)
    p.add_argument("--k", type=int, nargs="+", default=[1, 10], help="numbers of top eigenvalues to compare")
    p.add_argument("--tol", type=float, default=1e-3, help="relative tolerance passed to both")
    p.add_argument("--max-iter", type=int, default=100,
                   help="PyHessian's maxIter (per eigenvalue) and flatplug's max_iter (in all)")
    p.add_argument("--tight-tol", type=float, default=1e-4,
                   help="also time PyHessian at this tighter tolerance (its stopping test leaves errors near 1%% "
                        "at --tol); 0 skips it")
    p.add_argument("--ref-tol", type=float, default=1e-5, help="flatplug residual tolerance of the untimed reference")
    args = p.parse_args()
    device = C.setup(args)
    ph = pyhessian_module()
    counter = CountingHVP(ph)
    warnings.filterwarnings("ignore", message=".*create_graph=True.*")

    model = C.load_model(args, device)
    x, y = C.load_cifar(args, "test", args.n)
    x, y = x.to(device), y.to(device)
    criterion = nn.CrossEntropyLoss()  # mean over the batch: the same loss flatplug uses
    dim = sum(p.numel() for p in model.parameters())

    C.header("top-k Hessian eigenvalues: flatplug (Lanczos) vs PyHessian (power iteration)", args, device,
             pyhessian=importlib.metadata.version("pyhessian"),
             hessian=f"mean cross-entropy over the batch w.r.t. all {dim} parameters; tol={args.tol:g}, "
                     f"max_iter={args.max_iter}")

    def run_flatplug(k: int, seed: int, tol: float = args.tol, max_iter: int = args.max_iter, which="largest",
                     stopping: str = "residual"):
        m = hessian_eigenvalues(model, (x, y), k=k, tol=tol, max_iter=max_iter, seed=seed, which=which, quiet=True,
                                stopping=stopping)
        return sorted(m.details["eigenvalues"], reverse=True), m.details["hvp_count"], m.details

    def run_pyhessian(k: int, seed: int, tol: float):
        torch.manual_seed(seed)
        before = counter.count
        h = ph.hessian(model, criterion, data=(x, y), cuda=device.type == "cuda")
        eigenvalues, _ = h.eigenvalues(maxIter=args.max_iter, tol=tol, top_n=k)
        del h
        model.zero_grad(set_to_none=True)
        return sorted(eigenvalues, reverse=True), counter.count - before

    kmax = max(args.k)
    ref, _, ref_details = run_flatplug(kmax, 12345, tol=args.ref_tol, max_iter=max(300, 30 * kmax))
    ref_bound = max(r / abs(t) for r, t in zip(ref_details["residuals"], ref_details["eigenvalues"]))
    smallest = run_flatplug(1, 12345, tol=args.ref_tol, max_iter=300, which="smallest")[0][0]
    print()
    print(f"reference (flatplug, tol={args.ref_tol:g}, untimed): top-{kmax} = "
          + ", ".join(f"{v:.6g}" for v in ref) + f"; max relative residual bound {ref_bound:.1e}, "
          f"{ref_details['stop_reason']}")
    same = abs(smallest) < ref[-1]
    print(f"most negative eigenvalue {smallest:.4g} vs the {kmax}th largest {ref[-1]:.4g}: largest-magnitude "
          f"(PyHessian) and largest (flatplug) are {'the same' if same else 'NOT the same'} eigenvalues")

    def rel(a, b):
        return max(abs(u - v) / abs(v) for u, v in zip(a, b))

    rows, summary = [], []
    cpu: dict[str, list[float]] = {}
    ph_tols = [args.tol] + ([args.tight_tol] if args.tight_tol else [])
    for i, k in enumerate(args.k):
        fp_name = f"flatplug k={k}"
        fp_change = f"flatplug k={k} stopping=change"
        ph_names = {f"pyhessian k={k}" + ("" if t == args.tol else f" tol={t:g}"): t for t in ph_tols}
        methods = {fp_name: lambda r: run_flatplug(k, r),
                   fp_change: lambda r: run_flatplug(k, r, stopping="change")}
        for name, t in ph_names.items():
            methods[name] = lambda r, t=t: run_pyhessian(k, r, t)
        # one untimed warm-up call of each, before the first k only (a k=10 PyHessian call is long on a CPU)
        times, results = C.interleaved(methods, args.repeats, device, warmup=i == 0, cpu=cpu)
        ref_k = ref[:k]
        for name, runs in results.items():
            err = max(rel(run[0], ref_k) for run in runs)
            hvps = sorted(run[1] for run in runs)
            rows.append(C.time_cpu_row(name, times[name], cpu[name]) + [int(C.median(hvps)), f"{err:.1e}"])
        for fp_key, crit in ((fp_name, "residual"), (fp_change, "change")):
            fp_runs = results[fp_key]
            for name, t in ph_names.items():
                ph_runs = results[name]
                diff = max(rel(f[0], p[0]) for f, p in zip(fp_runs, ph_runs))  # same repeat, same seed
                speed = C.median(times[name]) / C.median(times[fp_key])
                cpu_speed = C.median(cpu[name]) / C.median(cpu[fp_key])
                summary.append((k, t, speed, cpu_speed, diff, fp_runs[0][0], ph_runs[0][0], crit))

    print()
    print("timings (wall-clock seconds per call) and accuracy (max relative error vs the reference over the runs):")
    print(C.table((*C.CPU_HEADERS, "median HVPs", "max rel err"), rows))
    print()
    for k, t, speed, cpu_speed, diff, fp_vals, ph_vals, crit in summary:
        same_tol = t == args.tol
        print(f"k={k}: flatplug  (tol={args.tol:g}, stopping test: {crit}) " + ", ".join(f"{v:.6g}" for v in fp_vals))
        print(f"k={k}: pyhessian (tol={t:g}) " + ", ".join(f"{v:.6g}" for v in ph_vals))
        if same_tol and k in GOALS:
            goal = f"goal >= {GOALS[k]:.0f}x: {C.verdict(speed >= GOALS[k])}"
        else:
            goal = "no goal: same tolerance only" if not same_tol else "no goal for this k"
        agree = f"goal <= {AGREE:.0%}: {C.verdict(diff <= AGREE)}" if same_tol else f"{'within' if diff <= AGREE else 'NOT within'} 1%"
        print(f"k={k}, pyhessian tol={t:g}, flatplug {crit} test: speed-up of flatplug {speed:.1f}x (CPU time {cpu_speed:.1f}x; {goal}); "
              f"max relative difference of the sorted eigenvalues {diff:.2e} over all runs ({agree})")
    print("HVPs: Hessian-vector products per call (besides them each builds the batch's gradient graph once).")
    if args.tight_tol:
        print(f"pyhessian tol={args.tight_tol:g}: PyHessian again at a tighter tolerance, to show what its "
              "cost and error do with a tighter stopping test; the goals apply to the same tolerance only.")


if __name__ == "__main__":
    main()
