"""Studies side by side, as URIAL's Table 1: one row per study (per base model), with the
base model zero-shot, URIAL's default context, the project's baseline and the exported bundle,
each with its confirm score and 95% interval under the study's judge and every audit judge; the
hygiene and length of each context's answers; the blind-review win rate of the bundle over
URIAL's default; and, on request, each other study's bundle answered by this model (transfer).

    from icl_search.compare import compare
    written = compare(["studies/demo.toml", "studies/smollm2.toml"], "runs/compare",
                      transfer=True)

`sources` opens the studies, `contexts` answers the contexts a confirmation lacks (zero-shot,
transfers), `rows` builds a study's row, `table` writes Markdown and CSV, `plot` the figure.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from icl_search.compare.rows import StudyRow, add_review, extras_for, parse_reviews, study_row
from icl_search.compare.sources import CompareError, ModelInfo, Source, open_sources
from icl_search.compare.table import markdown, panels, write_csv


def compare(args: list[str], out: str | Path, *, storage: str | None = None,
            transfer: bool = False, reviews: list[str] = (), evaluate: bool = True,
            plots: bool = True, say: Callable[[str], None] | None = None
            ) -> tuple[list[StudyRow], list[Path]]:
    """Open every study (one clear message for a bad one, before any model loads), answer
    what the confirmations lack (zero-shot; with `transfer`, the other studies' bundles)
    unless `evaluate` is False, and write compare.md, compare.csv and the figure to `out`."""
    from icl_search.io import atomic_write
    from icl_search.study.confirm import summarize

    say = say or (lambda m: None)
    sources = open_sources(list(args), storage)
    review_dirs = parse_reviews(list(reviews), [s.name for s in sources])
    out = Path(out)
    rows = []
    for src in sources:
        extras = extras_for(src, sources, transfer)
        missing: dict[str, str] = {}
        if evaluate and summarize(src.study) is not None:
            from icl_search.compare.contexts import evaluate_extras

            missing = evaluate_extras(src, extras, say=say)
        row = study_row(src, extras, missing)
        if src.name in review_dirs and row.confirmed:
            add_review(row, review_dirs[src.name])
        rows.append(row)
    out.mkdir(parents=True, exist_ok=True)
    md, csv = out / "compare.md", out / "compare.csv"
    with atomic_write(md) as fh:
        fh.write("\n".join(markdown(rows)) + "\n")
    write_csv(rows, csv)
    written = [md, csv]
    if plots:
        from icl_search.compare.plot import write_plots

        written += write_plots(rows, out)
    return rows, written


__all__ = ["CompareError", "ModelInfo", "Source", "StudyRow", "compare", "markdown", "panels",
           "study_row"]
