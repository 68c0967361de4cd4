"""The figure of `compare`: per study (base model) and judge, each context's confirm score with
its 95% interval, as a PNG (matplotlib) and an interactive HTML page (plotly, its JavaScript
written beside it so the page works offline). Judges have scales of their own, so each
(study, judge) pair is a panel of its own."""

from __future__ import annotations

from pathlib import Path

from icl_search.compare.rows import COLUMNS, StudyRow
from icl_search.compare.table import transfer_columns
from icl_search.io import atomic_write


def _series(rows: list[StudyRow]) -> list[tuple[str, list[str], list[float], list[float],
                                                 list[float], str]]:
    """(title, contexts, means, minus, plus, judge) per (study, judge) with a score."""
    cols = [*COLUMNS, *transfer_columns(rows)]
    out = []
    for r in rows:
        for i, judge in enumerate(r.judges):
            names, means, lo, hi = [], [], [], []
            for c in cols:
                cand = r.cells.get(c)
                if cand is None or i >= len(cand.views) or cand.views[i].confirm is None:
                    continue
                v = cand.views[i]
                names.append(c)
                means.append(v.confirm)
                lo.append(v.confirm - (v.low if v.low is not None else v.confirm))
                hi.append((v.high if v.high is not None else v.confirm) - v.confirm)
            if names:
                kind = "study judge" if i == 0 else "audit judge"
                out.append((f"{r.name}: {r.source.model.label}<br>{kind} {judge}", names,
                            means, lo, hi, judge))
    return out


def write_plots(rows: list[StudyRow], out: Path) -> list[Path]:
    """compare.png and compare.html (with plotly.min.js) in `out`; nothing when no study has
    a confirm score."""
    from icl_search.extras import require

    matplotlib = require("matplotlib")  # the `plots` extra (matplotlib, plotly)
    require("plotly")
    series = _series(rows)
    if not series:
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import plotly.graph_objects as go
    from plotly.offline import get_plotlyjs
    from plotly.subplots import make_subplots

    n = len(series)
    # one judge, one scale: panels of the same judge share their x range across models
    span: dict[str, tuple[float, float]] = {}
    for _, _, means, lo, hi, judge in series:
        a = min(m - d for m, d in zip(means, lo))
        b = max(m + d for m, d in zip(means, hi))
        old = span.get(judge, (a, b))
        span[judge] = (min(a, old[0]), max(b, old[1]))
    fig, axes = plt.subplots(n, 1, figsize=(7.5, 2.8 * n), squeeze=False)
    for ax, (title, names, means, lo, hi, judge) in zip(axes[:, 0], series):
        ax.errorbar(means, range(len(names)), xerr=[lo, hi], fmt="o", capsize=4)
        ax.set_yticks(range(len(names)), names)
        ax.invert_yaxis()
        ax.set_title(title.replace("<br>", "\n"), fontsize=8)
        a, b = span[judge]
        pad = (b - a) * 0.05 or 0.05
        ax.set_xlim(a - pad, b + pad)
        ax.set_xlabel("confirm score, 95% interval")
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    png = out / "compare.png"
    tmp = out / ".compare.png.tmp"
    fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    tmp.replace(png)

    pfig = make_subplots(rows=n, cols=1, subplot_titles=[s[0] for s in series])
    for k, (_, names, means, lo, hi, judge) in enumerate(series, start=1):
        pfig.add_trace(go.Scatter(x=means, y=names, mode="markers", showlegend=False,
                                  error_x={"type": "data", "symmetric": False, "array": hi,
                                           "arrayminus": lo}), row=k, col=1)
        pfig.update_yaxes(autorange="reversed", row=k, col=1)
        a, b = span[judge]
        pfig.update_xaxes(range=[a - (b - a) * 0.05, b + (b - a) * 0.05], row=k, col=1)
    pfig.update_layout(height=260 * n + 60, title="confirm score per context, 95% interval")
    js = out / "plotly.min.js"
    with atomic_write(js) as fh:
        fh.write(get_plotlyjs())
    html = out / "compare.html"
    with atomic_write(html) as fh:
        fh.write(pfig.to_html(include_plotlyjs="directory"))
    return [png, html, js]
