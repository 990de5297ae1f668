"""The report as a reader meets it (issue 11 section 4): labels that do not overlap at 16+ models,
a one-sentence headline per dataset, datasets by their real names, a wide table that scrolls in
its own box.

Oracles: matplotlib's own extents of the drawn labels, correlations of hand-made columns, and
Chromium's layout of the page (widths measured by a script in the rendered page).
"""

from __future__ import annotations

import itertools
import re

import numpy as np
import pandas as pd
import pytest

from flatplug._stats import correlations
from flatplug.report import build_report
from flatplug.report.figures import scatter
from flatplug.store import Store


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


@pytest.mark.parametrize("n, spread", [(16, 1.0), (24, 0.02), (40, 0.3)])
def test_point_labels_never_overlap(tmp_path, n, spread):
    """Guards against labels drawn on top of each other once a zoo has 16+ models (issue 11), including
    clustered points (24 models in eight tight groups) and a crowded plot (40 models)."""
    rng = np.random.default_rng(n)
    centres = rng.uniform(0, 1, size=(8, 2))
    pts = centres[np.arange(n) % 8] + rng.normal(0, spread * 0.05, size=(n, 2))
    names = [f"model_{i:02d}_{'x' * (i % 5)}" for i in range(n)]
    frame = pd.DataFrame({"model": names, "flatness": 10 + 5 * pts[:, 0], "robust": pts[:, 1]})
    c = correlations(frame, "flatness", "robust", n_boot=20)
    labels = scatter(tmp_path / "f.png", frame, "flatness", "robust", c, "test set")
    assert len(labels) == n
    fig = labels[0].figure
    renderer = fig.canvas.get_renderer()
    from matplotlib.text import Text

    boxes = [Text.get_window_extent(t, renderer) for t in labels]  # the text itself, without its leader line
    assert [t.get_text() for t in labels] == names
    for (i, a), (j, b) in itertools.combinations(enumerate(boxes), 2):
        assert not _overlap(a, b), (names[i], names[j])
    width, height = fig.bbox.width, fig.bbox.height
    assert all(b.x0 >= 0 and b.y0 >= 0 and b.x1 <= width and b.y1 <= height for b in boxes)


def test_headline_names_the_strongest_correlation_and_its_interval(tmp_path):
    """Guards against a report without a conclusion, or one that names the wrong pair or misreads the
    interval: one sentence per dataset with the strongest measure-robustness correlation."""
    with Store(tmp_path / "s.db") as s:
        for i in range(6):
            common = dict(model=f"m{i}", source="zoo", dataset="cifar10")
            s.put(**common, kind="accuracy", name="clean", value=0.5 + 0.01 * i,
                  details={"data": {"title": "CIFAR-10 test set", "n": 64}})
            s.put(**common, kind="attack", name="pgd", params={"eps": 8 / 255}, value=0.1 * i)
            s.put(**common, kind="measure", name="sharpness", value=float(10 - i))  # rank-reversed: rho = -1
            s.put(**common, kind="measure", name="noise", value=float([3, 1, 4, 1.5, 5, 2][i]))
        page = build_report(s, tmp_path / "rep", n_boot=200).read_text()
    headlines = re.findall(r'<p class="headline">(.*?)</p>', page)
    assert len(headlines) == 1
    text = headlines[0]
    assert text.startswith("CIFAR-10 test set (cifar10), 6 models: the strongest link is sharpness with "
                           "robust:pgd[eps=8/255], Spearman \u03c1 = -1.00")
    assert "excludes zero" in text


def test_the_wide_model_table_scrolls_inside_its_box(tmp_path):
    """Guards against a wide per-model table stretching the whole page sideways (issue 11): in Chromium
    the page is no wider than the window while the table's own box scrolls."""
    from test_report import _chromium, _run_chromium

    exe = _chromium()
    with Store(tmp_path / "s.db") as s:
        for i in range(5):
            common = dict(model=f"a_rather_long_model_name_{i}", source="zoo", dataset="cifar10")
            s.put(**common, kind="accuracy", name="clean", value=0.5)
            for k in range(40):
                s.put(**common, kind="measure", name=f"measure_with_a_long_name_{k:02d}", value=float(i * k))
        page = build_report(s, tmp_path / "rep", n_boot=10)
    probe = page.parent / "_probe.html"
    script = """<script>window.addEventListener("load", function () {
      var box = document.querySelector(".wrap.models"); var b = document.body;
      b.setAttribute("data-page", String(document.documentElement.scrollWidth));
      b.setAttribute("data-window", String(window.innerWidth));
      b.setAttribute("data-box-scroll", String(box.scrollWidth));
      b.setAttribute("data-box-client", String(box.clientWidth));
      b.setAttribute("data-checked", "yes"); });</script>"""
    probe.write_text(page.read_text().replace("</body>", script + "</body>"))
    proc = _run_chromium(exe, tmp_path / "profile", "--dump-dom", "--window-size=1000,800",
                         "--virtual-time-budget=5000", probe.as_uri())
    body = re.search(r"<body[^>]*>", proc.stdout)
    assert body, proc.stderr[-2000:]
    attrs = dict(re.findall(r'(data-[a-z-]+)="([^"]*)"', body.group(0)))
    assert attrs.get("data-checked") == "yes", body.group(0)
    assert int(attrs["data-page"]) <= int(attrs["data-window"]), attrs
    assert int(attrs["data-box-scroll"]) > int(attrs["data-box-client"]) + 500, attrs
