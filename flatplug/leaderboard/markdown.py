"""``docs/leaderboard.md``: one RobustBench-style table per dataset and threat model, with the
run's wall time, machine and sample, and the numbered sources of the published figures."""

from __future__ import annotations

import math
from typing import Any

from .plan import DATASET_NAMES, LITE_ITERATIONS, LITE_RESTARTS, PGD_STEPS, Plan, aa_label
from .published import Entry
from .table import LEADERBOARD_MASKING_MARGIN, MEASURES

MEASURE_LABELS = {
    "relative_flatness_mean": "κ mean", "relative_flatness_median": "κ median", "hessian_max_eigenvalue": "λmax",
    "hessian_trace": "tr H", "local_flatness": "LF", "sharpness_average": "sharp. avg",
    "sharpness_worst": "sharp. worst", "sharpness_robust": "robust sharp.",
}


def pct(v: float | None, se: float | None = None) -> str:
    """``61.2 ± 2.2``: an accuracy in percent with its standard error (``—`` when missing)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{100 * v:.1f}" + (f" ± {100 * se:.1f}" if se is not None and not math.isnan(se) else "")


def num(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:.3g}"


def pp(v: float | None) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:+.1f} pp"


class References:
    """Numbered sources of published figures, shared by the tables of one document."""

    def __init__(self) -> None:
        self.items: dict[str, int] = {}

    def cite(self, e: Entry) -> str:
        key = f"{e.source} — {e.url}"
        self.items.setdefault(key, len(self.items) + 1)
        return f"[{self.items[key]}]"


def published_cell(row: dict[str, Any], refs: References) -> str:
    """``upper bound 50.0%, n=200 [2]: AA -3.1 pp; clean 63.1% [5]: +0.4 pp``, or why there is nothing."""
    parts = []
    rob: Entry | None = row.get("published_robust")
    if rob is not None:
        diff = row.get("autoattack_minus_published")
        sub = "" if rob.representative else " (filtered subset)"
        parts.append(f"{rob.short()}{sub} {refs.cite(rob)}" + (f": ours {pp(diff)}" if diff is not None else ""))
    elif row.get("published_other_eps"):
        parts.append(f"robust figures only at eps {row['published_other_eps']}")
    clean: Entry | None = row.get("published_clean")
    if clean is not None:
        diff = row.get("clean_minus_published")
        parts.append(f"{clean.short()} {refs.cite(clean)}" + (f": {pp(diff)}" if diff is not None else ""))
    if not parts:
        return row.get("published_status") or "none at this threat model"
    return "; ".join(parts)


def total_seconds(row: dict[str, Any]) -> float:
    vals = [v for k, v in row.items() if k.startswith("seconds_") and isinstance(v, float) and not math.isnan(v)]
    return sum(vals) if vals else math.nan


def measure_columns(table) -> list[str]:
    return [c for c in MEASURES if c in table.columns and table[c].notna().any()]


def _aa_text(mode: str) -> str:
    if mode == "lite":
        return ("**AA-lite** (the CPU stand-in for AutoAttack): the per-image ensemble of APGD-CE and APGD-T "
                f"(9 target classes, {LITE_RESTARTS} restart each) with {LITE_ITERATIONS} iterations each where the "
                "original AutoAttack runs 100 (`autoattack`, `version=\"custom\"`, "
                f"`attacks_to_run=[\"apgd-ce\", \"apgd-t\"]`, `n_iter={LITE_ITERATIONS}`, "
                f"`n_restarts={LITE_RESTARTS}`, seed 0): an image counts as robust only if both attacks fail on it. "
                "It leaves out FAB-T and Square and cuts the iterations (their cost on the CPU), so it can be higher "
                "than the full AutoAttack on the same images. ")
    return (f"**{aa_label(mode)}**: the original AutoAttack's `{mode}` version (Croce & Hein 2020, RobustBench's "
            "evaluation): `autoattack(version=\"" + mode + "\", seed=0)`"
            + (", i.e. APGD-CE, APGD-T, FAB-T (100 iterations each) and Square (5000 queries), each attack on the "
               "images the previous ones did not break" if mode == "standard" else "")
            + ", built from torchattacks' members with the original's settings. ")


def _header(plan: Plan, record: dict[str, Any], command: str) -> list[str]:
    m = record.get("machine", {})
    device = str(record.get("device", "cpu"))
    gpu = f", GPU {m['gpu']}" if device.startswith("cuda") and m.get("gpu") else ""
    sizes = ", ".join(f"{DATASET_NAMES.get(d, d)}: {'all' if n is None else n} images" for d, n in record["n"].items())
    subset = all(n is not None for n in record["n"].values())
    robust = ("robust sharp. = adaptive worst-case sharpness of the adversarial loss (5 ascent steps, PGD-5 at the "
              "threat model re-run at every perturbed weight)" if record.get("robust_sharpness") else
              "robust-loss sharpness is not in this flatplug yet (`sharpness(..., adversarial=...)`): no column")
    return [
        "# Flatness leaderboard of the real model zoo", "",
        f"Generated by `{command}` (flatplug {record.get('flatplug')}), started {record.get('started')}. "
        f"Wall time of the run: **{record.get('wall_seconds', math.nan):.0f} s** "
        f"({record.get('compute_seconds', math.nan):.0f} s summed over the stored results, including any a resumed "
        f"run took from the store). Machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('torch_threads')} "
        f"torch threads{gpu}; device {device}; executor {record.get('executor')}.", "",
        f"Sample: {sizes}; class-balanced, seed 0, the same images for every model of a dataset."
        + (" On the CPU these subsets stand in for the full test sets; the full-test-set run on a GPU is "
           "pending." if subset else ""), "",
        "Accuracies in % ± one binomial standard error. " + _aa_text(plan.aa),
        f"**PGD-{PGD_STEPS}**: {PGD_STEPS} steps of 2.5·eps/{PGD_STEPS} from a random start. Rows are sorted by "
        f"{aa_label(plan.aa)} accuracy. **mask?**: PGD accuracy above {aa_label(plan.aa)} accuracy by more than "
        f"{100 * LEADERBOARD_MASKING_MARGIN:.0f} pp and two standard errors of the difference, a sign of gradient "
        "masking (the flatness of such a model describes masked gradients, not robustness). The standard errors are "
        "those of independent samples; both attacks run on the same images, so the rule is conservative (in "
        "practice a gap of 4-6 pp).", "",
        "**published**: the authors' (or their benchmark's) strongest robust figure at this threat model and "
        "their clean accuracy, with ours minus theirs where their images are the test set or an unfiltered "
        "sample of it; `flatplug/leaderboard/published.json` quotes every figure. *not published*: none in "
        "the sources checked; *not retrieved*: the paper reports one but its text could not be read "
        "(notes/leaderboard.md lists every source). CIFAR-10 here is the JPEG copy in ../shared, so clean "
        "accuracies differ a little from the authors' binary test set.", "",
        "Measures: κ = relative flatness (Petzka et al., pairwise; mean and median over images), λmax = top "
        "Hessian eigenvalue, tr H = Hessian trace (Hutchinson, 30 probes), LF = local flatness (Xu et al.) in "
        "the threat model's ball, sharp. avg / worst = adaptive average / worst-case sharpness (Andriushchenko "
        "et al., rho 0.05, L2, on the test images of the sample: the worst case is one search over all of them, "
        "where the paper averages m-sharpness over batches of 128 training images, and uses larger rho for it); "
        f"{robust}. **s**: seconds of this model's results at this threat model "
        "(threat-model-free results count in each of its tables). wong_small_l2_36px was trained for L2 36/255: "
        "it is ranked at the Linf threat models like every model and scored at its own L2 ball in a table of "
        "its own.", "",
    ]


def markdown(plan: Plan, table, record: dict[str, Any], command: str) -> str:
    refs = References()
    out = _header(plan, record, command)
    measures = measure_columns(table)
    for (dataset, label), sub in table.groupby(["dataset", "threat_model"], sort=False):
        out += [f"## {DATASET_NAMES.get(dataset, dataset)}, {label}", ""]
        head = ["#", "model", "training", "clean", aa_label(plan.aa), f"PGD-{PGD_STEPS}", "mask?", "published",
                *[MEASURE_LABELS[c] for c in measures], "s", "source"]
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in sub.to_dict("records"):
            cells = [str(row["rank"]), f"`{row['model']}`", row["training"], pct(row["clean"], row["clean_se"]),
                     pct(row["autoattack"], row["autoattack_se"]), pct(row["pgd"], row["pgd_se"]),
                     "**yes**" if row["masking"] else "", published_cell(row, refs),
                     *[num(row[c]) for c in measures], num(total_seconds(row)), row["source"]]
            out.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
        failures = [f"`{r['model']}`: {r['failures']}" for r in sub.to_dict("records") if r["failures"]]
        if failures:
            out += ["", "Not scored or failed: " + "; ".join(failures) + "."]
        out.append("")
    out += ["## Sources of the published figures", ""]
    out += [f"{i}. {key}" for key, i in sorted(refs.items.items(), key=lambda kv: kv[1])]
    out.append("")
    return "\n".join(out)
