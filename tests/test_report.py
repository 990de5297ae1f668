"""The report: the summary pivot, failures, escaping, self-containment, and the page in headless Chromium.

Oracles are independent of the code: the values a test itself put into a store, correlations
worked out by hand or by scipy, PNG files decoded with PIL, the HTML parsed with html.parser,
and Chromium's own view of the page (its screenshot and the load state of every image).
"""

from __future__ import annotations

import html
import math
import re
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import shared_path
from flatplug.report import build_report, summary_table
from flatplug.store import Store

EPS2 = 2 / 255
EPS8 = 8 / 255
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class _Page(HTMLParser):
    """Every tag with its attributes, and the text of the page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parse(page: Path) -> _Page:
    p = _Page()
    p.feed(page.read_text(encoding="utf-8"))
    return p


def put(store: Store, model: str, kind: str, name: str, value, params=None, dataset="cifar10", **kw) -> None:
    store.put(model=model, source="zoo", dataset=dataset, kind=kind, name=name, params=params or {}, value=value, **kw)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    """Four models with known numbers, a measure run at two settings, and two failures."""
    s = Store(tmp_path / "results.db")
    measure = [1.0, 2.0, 3.0, 4.0]
    robust2 = [0.10, 0.30, 0.20, 0.40]  # vs measure: Spearman 0.8, Kendall 2/3 (by hand)
    robust8 = [0.05, 0.04, 0.03, 0.02]  # exactly reversed: -1, -1
    clean = [0.50, 0.60, 0.70, 0.80]
    for i, m in enumerate(["m0", "m1", "m2", "m3"]):
        put(s, m, "accuracy", "clean", clean[i], {"n": 64}, seconds=0.5, device="cpu", versions={"torch": "2.x"})
        put(s, m, "attack", "pgd", robust2[i], {"eps": EPS2, "steps": 10, "norm": "linf"}, seconds=1.0)
        put(s, m, "attack", "pgd", robust8[i], {"eps": EPS8, "steps": 10, "norm": "linf"}, seconds=2.0)
        put(s, m, "measure", "relative_flatness", measure[i], {"variant": "pairwise"}, seconds=0.25)
        put(s, m, "measure", "local_flatness", 10.0 + i, {"eps": 0.01, "steps": 10})
        put(s, m, "measure", "local_flatness", 20.0 - i, {"eps": 0.03, "steps": 10})
    put(s, "m2", "measure", "hessian_eigenvalues", None, {"k": 1}, status="failed",
        error="RuntimeError: out of memory\nTraceback (most recent call last): ...")
    put(s, "broken", "failure", "load", None, status="failed",
        error="CheckpointError: model 'broken': cannot read the checkpoint /x/broken.pt")
    yield s
    s.close()


# -- the summary pivot ---------------------------------------------------------------------------


def test_summary_table_pivots_every_value(store: Store) -> None:
    t = summary_table(store)
    assert list(t["model"]) == ["broken", "m0", "m1", "m2", "m3"]
    assert list(t.columns) == [
        "model", "source", "dataset", "clean_accuracy", "robust:pgd[eps=2/255]", "robust:pgd[eps=8/255]",
        "hessian_eigenvalues", "local_flatness[eps=0.01]", "local_flatness[eps=0.03]", "relative_flatness",
        "seconds", "failures",
    ]
    by = t.set_index("model")
    assert list(by.loc[["m0", "m1", "m2", "m3"], "clean_accuracy"]) == [0.5, 0.6, 0.7, 0.8]
    assert list(by.loc[["m0", "m1", "m2", "m3"], "robust:pgd[eps=2/255]"]) == [0.1, 0.3, 0.2, 0.4]
    assert list(by.loc[["m0", "m1", "m2", "m3"], "robust:pgd[eps=8/255]"]) == [0.05, 0.04, 0.03, 0.02]
    assert list(by.loc[["m0", "m1", "m2", "m3"], "relative_flatness"]) == [1.0, 2.0, 3.0, 4.0]
    assert list(by.loc[["m0", "m1", "m2", "m3"], "local_flatness[eps=0.01]"]) == [10.0, 11.0, 12.0, 13.0]
    assert list(by.loc[["m0", "m1", "m2", "m3"], "local_flatness[eps=0.03]"]) == [20.0, 19.0, 18.0, 17.0]
    assert list(by.loc[["m0", "m1", "m2", "m3"], "seconds"]) == [3.75] * 4  # 0.5 + 1 + 2 + 0.25
    # failures: the failed cell is empty and the failure is noted with its error's first line
    assert by["hessian_eigenvalues"].isna().all()
    assert by.loc["m2", "failures"] == "hessian_eigenvalues: RuntimeError: out of memory"
    assert by.loc["broken", "failures"].startswith("load: CheckpointError: model 'broken'")
    assert by.loc[["broken"]].drop(columns=["source", "dataset", "failures"]).isna().all(axis=None)
    assert by.loc["m0", "failures"] == ""
    meta = t.attrs["columns"]
    assert meta["robust:pgd[eps=8/255]"] == {"kind": "attack", "name": "pgd",
                                             "params": {"eps": EPS8, "steps": 10, "norm": "linf"}}
    assert meta["relative_flatness"]["kind"] == "measure" and meta["clean_accuracy"]["kind"] == "accuracy"


def test_summary_table_accepts_a_store_its_path_or_its_frame(store: Store) -> None:
    a = summary_table(store)
    pd.testing.assert_frame_equal(a, summary_table(store.path))
    pd.testing.assert_frame_equal(a, summary_table(store.to_dataframe()))


def test_labels_show_only_the_settings_that_differ(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db") as s:
        # one setting: the bare name, whatever the params; attacks always name their eps
        put(s, "a", "measure", "sharpness", 1.0, {"rho": 0.05, "kind": "worst"})
        put(s, "a", "attack", "apgd-ce", 0.3, {"eps": 0.5, "norm": "l2"})
        # several settings, differing in one key (the other keys stay out of the label)
        put(s, "a", "measure", "hessian_eigenvalues", 5.0, {"k": 1, "tol": 1e-3})
        put(s, "a", "measure", "hessian_eigenvalues", 6.0, {"k": 3, "tol": 1e-3})
        # a key present in only one setting
        put(s, "a", "measure", "loss_landscape", 0.1, {})
        put(s, "a", "measure", "loss_landscape", 0.2, {"span": 0.5})
        # a model scored on two datasets: two rows
        put(s, "a", "accuracy", "clean", 0.9, dataset="mnist")
        t = summary_table(s)
    assert set(t.columns) == {"model", "source", "dataset", "clean_accuracy", "robust:apgd-ce[eps=0.5]", "sharpness",
                              "hessian_eigenvalues[k=1]", "hessian_eigenvalues[k=3]", "loss_landscape",
                              "loss_landscape[span=0.5]", "seconds", "failures"}
    by = t.set_index("dataset")
    assert by.loc["cifar10", "hessian_eigenvalues[k=3]"] == 6.0 and by.loc["cifar10", "loss_landscape[span=0.5]"] == 0.2
    assert by.loc["mnist", "clean_accuracy"] == 0.9 and math.isnan(by.loc["cifar10", "clean_accuracy"])


def test_duplicated_rows_keep_the_latest(store: Store) -> None:
    rows = store.to_dataframe()
    newer = rows[(rows["model"] == "m0") & (rows["name"] == "relative_flatness")].copy()
    newer["value"] = 99.0
    newer["created"] = newer["created"] + 10
    t = summary_table(pd.concat([newer, rows]))  # order of the frame does not matter, 'created' does
    assert t.set_index("model").loc["m0", "relative_flatness"] == 99.0
    assert len(t) == 5


def test_implementation_versions_are_not_mixed(store: Store) -> None:
    """Rows of two implementation versions of one measure were deduplicated by the time they were
    written, so an older version's row written later replaced the newer one, and models scored only by
    the older version shared the column (and its correlation) with the newer numbers. The newest version
    wins per model and setting (compared as versions: 10 > 9), and a column holding models of different
    versions is split by version."""
    rows = store.to_dataframe()
    later = rows[(rows["model"] == "m1") & (rows["name"] == "relative_flatness")].copy()
    later["impl_version"], later["value"], later["created"] = "flatplug:9", 999.0, later["created"] + 10
    current = rows.copy()
    current.loc[current["name"] == "relative_flatness", "impl_version"] = "flatplug:10"
    t = summary_table(pd.concat([current, later]))
    assert t.set_index("model").loc["m1", "relative_flatness"] == 2.0  # version 10, though written earlier
    old_only = current[(current["model"] == "m3") & (current["name"] == "relative_flatness")].copy()
    old_only["model"], old_only["impl_version"], old_only["value"] = "m4", "flatplug:9", 5.0
    t = summary_table(pd.concat([current, old_only]))
    assert {"relative_flatness (flatplug:10)", "relative_flatness (flatplug:9)"} <= set(t.columns)
    assert t.set_index("model").loc["m4", "relative_flatness (flatplug:9)"] == 5.0
    assert math.isnan(t.set_index("model").loc["m4", "relative_flatness (flatplug:10)"])
    # between two plugins' implementations of one setting, the one written last wins (not the name's order)
    other = current[(current["model"] == "m1") & (current["name"] == "relative_flatness")].copy()
    other["impl_version"], other["value"], other["created"] = "acme:1", 7.0, other["created"] + 10
    split = summary_table(pd.concat([current, other])).set_index("model")
    assert split.loc["m1", "relative_flatness (acme:1)"] == 7.0
    assert math.isnan(split.loc["m1", "relative_flatness (flatplug:10)"])
    other["impl_version"] = "zeta:1"
    current2 = current.copy()
    current2["created"] = current2["created"] + 20
    assert summary_table(pd.concat([current2, other])).set_index("model").loc["m1", "relative_flatness"] == 2.0


def test_a_failure_without_weights_does_not_supersede_good_rows(store: Store) -> None:
    """A load that failed before the weights were known is written with an empty model fingerprint; as
    the model's newest row it made every good row of the model count as older weights ("superseded"),
    and the model left every table and correlation."""
    rows = store.to_dataframe()
    rows["model_fingerprint"] = "a" * 64
    failure = rows[(rows["model"] == "m2") & (rows["name"] == "clean")].copy()
    failure["kind"], failure["name"], failure["status"] = "failure", "load", "failed"
    failure["value"], failure["model_fingerprint"], failure["created"] = None, "", failure["created"] + 10
    t = summary_table(pd.concat([rows, failure]))
    assert t.set_index("model").loc["m2", "relative_flatness"] == 3.0
    assert len(summary_table(pd.concat([rows, failure]), superseded=True)) == len(t)


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"lacks the columns kind, name, params, value"):
        summary_table(pd.DataFrame({"model": ["a"], "source": ["zoo"], "dataset": ["d"]}))
    with pytest.raises(FileNotFoundError, match=r"no results store there"):
        build_report(tmp_path / "nope.db", tmp_path / "out")
    with pytest.raises(TypeError, match=r"expected a results Store, the path of one, or a DataFrame"):
        summary_table(42)


# -- the page ------------------------------------------------------------------------------------


def _check_images(page: Path, parsed: _Page) -> list[Path]:
    """Every <img> is a relative link to a real PNG beside the page with non-trivial content."""
    from PIL import Image

    srcs = [a.get("src") for t, a in parsed.tags if t == "img"]
    files = []
    for src in srcs:
        assert src and not re.match(r"^[a-z]+:|^//|^/", src) and "/" not in src, src
        f = page.parent / src
        assert f.read_bytes()[:8] == PNG_MAGIC, src
        with Image.open(f) as im:
            im.load()
            rgb = np.asarray(im.convert("RGB"))
        assert rgb.shape[0] > 150 and rgb.shape[1] > 150
        assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 20 and rgb.std() > 10, f"{src} looks blank"
        files.append(f)
    return files


def _self_contained(parsed: _Page) -> None:
    tags = {t for t, _ in parsed.tags}
    assert not tags & {"script", "link", "iframe", "object", "embed"}, tags
    for tag, attrs in parsed.tags:
        for key in ("src", "href"):
            v = attrs.get(key)
            if v is not None:
                assert not re.match(r"^[a-z]+:|^//", v), f"<{tag} {key}={v!r}> reaches outside the folder"


def test_report_correlations_figures_and_failures(store: Store, tmp_path: Path) -> None:
    page = build_report(store, tmp_path / "rep", n_boot=200)
    assert page == tmp_path / "rep" / "index.html"
    parsed = parse(page)
    _self_contained(parsed)
    imgs = _check_images(page, parsed)
    # 3 measures with values x 3 accuracies (hessian_eigenvalues failed everywhere: no figure)
    assert len(imgs) == 9
    corr = pd.read_csv(tmp_path / "rep" / "correlations.csv").set_index(["x", "y"])
    r = corr.loc[("relative_flatness", "robust:pgd[eps=2/255]")]
    assert r["n"] == 4 and r["spearman"] == pytest.approx(0.8) and r["kendall"] == pytest.approx(2 / 3)
    assert r["spearman_lo"] <= 0.8 <= r["spearman_hi"]
    r = corr.loc[("relative_flatness", "robust:pgd[eps=8/255]")]
    assert (r["spearman"], r["kendall"], r["spearman_lo"], r["spearman_hi"]) == (-1, -1, -1, -1)
    r = corr.loc[("local_flatness[eps=0.03]", "clean_accuracy")]
    assert (r["spearman"], r["kendall"]) == (-1, -1)
    assert (tmp_path / "rep" / r["figure"]).is_file()
    text = " ".join(parsed.text)
    assert "+0.80" in text and "+0.67" in text  # the hand-computed values, shown
    # the failures section lists both failures with their full errors
    failures = page.read_text().split('id="failures"')[1].split('id="provenance"')[0]
    assert "RuntimeError: out of memory\nTraceback (most recent call last)" in failures
    assert "CheckpointError: model &#x27;broken&#x27;: cannot read the checkpoint /x/broken.pt" in failures
    # provenance: n, attack settings as written by people, device and versions
    prov = page.read_text().split('id="provenance"')[1]
    for expected in ("64", "pgd (eps=2/255, norm=linf, steps=10)", "cpu", "torch 2.x"):
        assert expected in prov, expected


def test_model_names_and_errors_are_escaped(tmp_path: Path) -> None:
    evil = '<img src=x onerror=alert(1)>&"q\''
    with Store(tmp_path / "s.db") as s:
        for i, m in enumerate([evil, "$\\alpha$ model", "_private", "plain"]):
            put(s, m, "accuracy", "clean", 0.5 + 0.1 * i)
            put(s, m, "measure", "<b>bold</b>", float(i))
            put(s, m, "measure", "loss_landscape", 0.1 * i,
                details={"alphas": [-1.0, 0.0, 1.0], "losses": [2.0 + i, 1.0, 2.5]})
        put(s, evil, "failure", "load", None, status="failed", error="<script>alert('x')</script>")
        page = build_report(s, tmp_path / "rep", n_boot=20)
    raw = page.read_text()
    assert evil not in raw and "<b>bold</b>" not in raw and "<script>" not in raw
    assert html.escape(evil) in raw and "&lt;b&gt;bold&lt;/b&gt;" in raw
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in raw
    parsed = parse(page)
    _self_contained(parsed)
    # the only images are our figures: an injected <img src=x> would show up here
    assert all(a["src"].startswith("fig-") for t, a in parsed.tags if t == "img")
    assert {t for t, _ in parsed.tags} <= {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p",
                                            "nav", "a", "div", "table", "thead", "tbody", "tr", "th", "td", "figure",
                                            "img", "figcaption", "pre", "dl", "dt", "dd"}
    assert evil in " ".join(parsed.text)  # and the reader sees the name as it is
    # names with matplotlib mathtext or a leading underscore still make their figures
    assert len(_check_images(page, parsed)) == 2 + 1  # two measures vs clean accuracy, and the curves


def test_landscapes_one_and_two_dimensional(tmp_path: Path) -> None:
    alphas = [-1.0, -0.5, 0.0, 0.5, 1.0]
    with Store(tmp_path / "s.db") as s:
        for i, m in enumerate(["a", "b", "c"]):
            put(s, m, "measure", "loss_landscape", 1.0 + i, {"directions": 1, "steps": 5},
                details={"alphas": alphas, "losses": [1.0 + a * a * (i + 1) for a in alphas], "centre_loss": 1.0})
            put(s, m, "measure", "loss_landscape", 2.0 + i, {"directions": 2, "steps": 3},
                details={"alphas": [-1.0, 0.0, 1.0], "betas": [-1.0, 0.0, 1.0],
                         "losses": [[3.0, 2.0, 3.0], [2.0, 1.0, 2.0 + i], [3.0, 2.0, 3.5]], "centre_loss": 1.0})
        # a malformed curve (lengths differ) is left out rather than failing the report
        put(s, "d", "measure", "loss_landscape", 0.5, {"directions": 1, "steps": 5},
            details={"alphas": alphas, "losses": [1.0, 2.0]})
        page = build_report(s, tmp_path / "rep", n_boot=10)
    parsed = parse(page)
    landscape_imgs = [a["src"] for t, a in parsed.tags if t == "img" and "landscape" in a["src"]]
    assert len(landscape_imgs) == 2
    _check_images(page, parsed)
    text = " ".join(parsed.text)
    assert "No figures" in text  # no accuracy in this store: nothing to correlate, and it says so
    # a rerun into the same folder replaces the figures instead of piling them up
    (tmp_path / "rep" / "notes.txt").write_text("kept")
    build_report(s.path, tmp_path / "rep", n_boot=10)
    assert len(list((tmp_path / "rep").glob("fig-*.png"))) == 2 and (tmp_path / "rep" / "notes.txt").is_file()


def test_empty_store(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db") as s:
        page = build_report(s, tmp_path / "rep", title="Empty <zoo>")
    parsed = parse(page)
    text = " ".join(parsed.text)
    assert "The store holds no results" in text and "Empty <zoo>" in text
    assert "<title>Empty &lt;zoo&gt;</title>" in page.read_text()
    assert summary_table(Store(tmp_path / "s.db")).empty


# -- real models, real images, rendered in Chromium -----------------------------------------------

REAL_MODELS = ("marabou_small", "oval_deep", "eran_conv_small_pgd", "sdp_cnn_a_mix")


@pytest.fixture(scope="module")
def real_store(tmp_path_factory) -> tuple[Store, dict[str, dict[str, float]]]:
    """Four CIFAR-10 zoo models measured on 64 real test images, written with Store.put."""
    import flatplug as fp
    from flatplug.attacks import robust_accuracy
    from flatplug.sources import UnknownModelError, ZooSource, load_imagefolder

    zoo = ZooSource(shared_path("models", "zoo.json"))
    data = load_imagefolder(shared_path("data", "cifar10", "test.tar.gz"), n=64, seed=0)
    store = Store(tmp_path_factory.mktemp("real") / "results.db")
    versions = {"torch": torch.__version__}
    common = dict(source="zoo", dataset="cifar10", device="cpu", versions=versions)
    values: dict[str, dict[str, float]] = {}
    for name in REAL_MODELS:
        model = zoo.load(name).module
        with torch.no_grad():
            clean = float((model(data.x).argmax(1) == data.y).float().mean())
        start = time.perf_counter()
        robust = robust_accuracy(model, data, eps=EPS2, steps=5)
        t_attack = time.perf_counter() - start
        rf = fp.measures.relative_flatness(model, data, quiet=True)
        ll = fp.measures.loss_landscape(model, data, steps=7, span=0.5, quiet=True)
        store.put(model=name, kind="accuracy", name="clean", params={"n": 64}, value=clean, **common)
        store.put(model=name, kind="attack", name="pgd", params={"eps": EPS2, "steps": 5, "norm": "linf"},
                  value=robust, seconds=t_attack, **common)
        store.put(model=name, kind="measure", name=rf.name, params={"variant": "pairwise"}, value=rf.value,
                  details=rf.details, seconds=rf.seconds, **common)
        store.put(model=name, kind="measure", name=ll.name, params={"steps": 7, "span": 0.5}, value=ll.value,
                  details=ll.details, seconds=ll.seconds, **common)
        values[name] = {"clean": clean, "robust": robust, "rf": rf.value}
    try:
        zoo.load("sdp_cnn_a_mixx")
    except UnknownModelError as exc:  # a real failure, recorded as the scoring run would
        store.put(model="sdp_cnn_a_mixx", kind="failure", name="load", value=None, status="failed",
                  error=f"{type(exc).__name__}: {exc}", **common)
    yield store, values
    store.close()


def test_real_rows_summary_and_correlations(real_store, tmp_path: Path) -> None:
    stats = pytest.importorskip("scipy.stats")
    store, values = real_store
    t = summary_table(store).set_index("model")
    for name, v in values.items():
        assert t.loc[name, "clean_accuracy"] == v["clean"]
        assert t.loc[name, "robust:pgd[eps=2/255]"] == v["robust"]
        assert t.loc[name, "relative_flatness"] == v["rf"]
    assert "UnknownModelError: unknown model 'sdp_cnn_a_mixx'" in t.loc["sdp_cnn_a_mixx", "failures"]
    build_report(store, tmp_path / "rep", n_boot=200)
    corr = pd.read_csv(tmp_path / "rep" / "correlations.csv").set_index(["x", "y"])
    rf = [values[m]["rf"] for m in REAL_MODELS]
    for col, key in (("robust:pgd[eps=2/255]", "robust"), ("clean_accuracy", "clean")):
        acc = [values[m][key] for m in REAL_MODELS]
        row = corr.loc[("relative_flatness", col)]
        assert row["n"] == 4
        assert row["spearman"] == pytest.approx(stats.spearmanr(rf, acc).statistic, abs=1e-12)
        assert row["kendall"] == pytest.approx(stats.kendalltau(rf, acc).statistic, abs=1e-12)


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium); .ci/run installs it")
    return exe


def _run_chromium(exe: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=120)


_IMAGE_PROBE = """
<img id="probe-missing" src="probe-does-not-exist.png" alt="">
<script>
window.addEventListener("load", function () {
  var all = Array.prototype.slice.call(document.images);
  var report = all.filter(function (i) { return i.id !== "probe-missing"; });
  var loaded = report.filter(function (i) { return i.complete && i.naturalWidth > 0; });
  var probe = document.getElementById("probe-missing");
  var b = document.body;
  b.setAttribute("data-images", String(report.length));
  b.setAttribute("data-loaded", String(loaded.length));
  b.setAttribute("data-broken", report.filter(function (i) { return loaded.indexOf(i) < 0; })
                                      .map(function (i) { return i.getAttribute("src"); }).join(" "));
  b.setAttribute("data-probe-broken", String(probe.complete && probe.naturalWidth === 0));
  b.setAttribute("data-checked", "yes");
});
</script>
"""


def test_chromium_renders_the_real_report(real_store, tmp_path: Path) -> None:
    exe = _chromium()
    store, _ = real_store
    out = tmp_path / "rep"
    page = build_report(store, out, n_boot=200)
    parsed = parse(page)
    _self_contained(parsed)
    n_img = len(_check_images(page, parsed))
    assert n_img == 2 * 2 + 1  # relative_flatness and loss_landscape vs robust and clean, and the curves
    # the screenshot: a page with text, tables and figures, not a blank or error page
    shot = tmp_path / "shot.png"
    proc = _run_chromium(exe, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1200,2000",
                         page.as_uri())
    assert shot.is_file(), proc.stderr[-2000:]
    from PIL import Image

    with Image.open(shot) as im:
        rgb = np.asarray(im.convert("RGB")).astype(float)
    assert rgb.shape[:2] == (2000, 1200)
    colours = len(np.unique(rgb.reshape(-1, 3), axis=0))
    non_white = float((rgb.min(axis=2) < 240).mean())
    assert colours > 50 and rgb.std() > 10 and non_white > 0.02, (colours, rgb.std(), non_white)
    # the figures load in the browser: a copy of the page with a probe that reads each image's state,
    # checked against a deliberately missing image so that a probe that never runs cannot pass
    probe = out / "_probe.html"
    probe.write_text(page.read_text().replace("</body>", _IMAGE_PROBE + "</body>"))
    proc = _run_chromium(exe, tmp_path / "profile", "--dump-dom", "--virtual-time-budget=10000", probe.as_uri())
    body = re.search(r"<body[^>]*>", proc.stdout)
    assert body, proc.stderr[-2000:]
    attrs = dict(re.findall(r'(data-[a-z-]+)="([^"]*)"', body.group(0)))
    assert attrs.get("data-checked") == "yes", body.group(0)
    assert attrs["data-probe-broken"] == "true"
    assert int(attrs["data-images"]) == n_img
    assert int(attrs["data-loaded"]) == n_img, f"broken in Chromium: {attrs['data-broken']}"
