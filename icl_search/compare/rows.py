"""One row per study: its confirm scores per context (zero-shot, URIAL's default, the project's
baseline, the exported bundle, other studies' bundles) under every judge, with the hygiene and
length of each context's answers and, where a review folder is given, the blind win rate of
the bundle over URIAL's default. A cell that cannot be filled says why."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from icl_search.compare.contexts import TRANSFER, ZERO_SHOT, Extra, zero_shot
from icl_search.compare.sources import CompareError, Source

#: The reference columns, in URIAL's Table 1 order, then the search's top trial on the confirm
#: set (the bundle when it is confirmed), then the transfers.
ZS, URIAL, BASE, BUNDLE, TOP = ZERO_SHOT, "inst_1k", "baseline", "bundle", "search top"
COLUMNS = (ZS, URIAL, BASE, BUNDLE, TOP)
NOT_CONFIRMED = "not confirmed"


@dataclass
class StudyRow:
    source: Source
    judges: list[str] = field(default_factory=list)  # the study judge, then the audit judges
    confirm_set: str | None = None  # a digest of the confirm query ids
    n_queries: int = 0
    cells: dict[str, Any] = field(default_factory=dict)  # column -> verdict.Row
    missing: dict[str, str] = field(default_factory=dict)  # column -> why it is empty
    bundle_label: str = "-"
    top_label: str = "-"
    urial_file: str | None = None
    review: dict[str, Any] | None = None
    review_missing: str | None = "no review folder given (--review NAME=DIR)"
    #: transfer column -> the donor's candidate it answers with ("trial 3", "baseline")
    transfers: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def confirmed(self) -> bool:
        return bool(self.judges)

    def columns(self) -> list[str]:
        return list(COLUMNS) + [c for c in self.cells.keys() | self.missing.keys()
                                if c.startswith(TRANSFER + ":")]


def extras_for(src: Source, others: list[Source], transfer: bool) -> list[Extra]:
    from icl_search.compare.contexts import transfer_from

    extras = [zero_shot()]
    if transfer:
        extras += [transfer_from(o) for o in others if o.name != src.name]
    return extras


def study_row(src: Source, extras: list[Extra], missing: dict[str, str]) -> StudyRow:
    """The row of one study from its stored confirmation and the stored extras."""
    from icl_search.study.confirm import confirm_query_ids, outside_rows, summarize

    row = StudyRow(src)
    summary = summarize(src.study)
    if summary is None or not summary.rows:
        for c in [*COLUMNS, *(e.candidate.label for e in extras[1:])]:
            row.missing[c] = NOT_CONFIRMED
        row.review_missing = NOT_CONFIRMED
        return row
    row.judges = list(summary.judges)
    ids = confirm_query_ids(src.study)
    row.confirm_set = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:8]
    row.n_queries = len(ids)
    by_role = {r.role: r for r in summary.rows}
    urial = by_role.get("urial")
    if urial is not None:
        row.cells[URIAL] = urial
        row.urial_file = urial.label.removeprefix("urial:")
    else:
        row.missing[URIAL] = "no URIAL baseline: set search.baseline.urial in the config"
    if "baseline" in by_role:
        row.cells[BASE] = by_role["baseline"]
    else:
        row.missing[BASE] = "the baseline has no confirm score"
    best = summary.best
    if best is None:
        row.missing[BUNDLE] = "no candidate has a confirm score"
    else:
        row.cells[BUNDLE] = best
        row.bundle_label = (f"{best.label} (confirmed)" if best.role == "trial" else
                            f"{best.label} (kept: no trial is confirmed)")
    top = summary.top
    if top is None:
        row.missing[TOP] = "no trial has a confirm score"
    else:
        row.cells[TOP] = top
        row.top_label = top.label + (" (confirmed)" if top.confirmed else " (not confirmed)")
    stored = outside_rows(src.study, [e.candidate for e in extras if not e.missing])
    for e in extras:
        label = e.candidate.label
        if e.donor is not None:
            row.transfers[label] = e.donor
        if label in stored:
            row.cells[label] = stored[label]
        else:
            row.missing[label] = (e.missing or missing.get(label)
                                  or "not evaluated (compare ran with --stored)")
    return row


def add_review(row: StudyRow, folder: Path) -> None:
    """The blind win rate of the bundle over URIAL's default from a review folder (`icl-search
    review`): the comparison whose sides are the bundle's label (or 'bundle') and the URIAL
    file's (or 'inst_1k'); people first, else an LLM rater."""
    from icl_search.review import ReviewError, score_review

    try:
        score = score_review(folder)
    except ReviewError as exc:
        raise CompareError(f"--review {row.name}={folder}: {exc}") from None
    bundle = row.cells.get(BUNDLE)
    mine = {"bundle", *([bundle.label] if bundle is not None else [])}
    theirs = {"inst_1k", URIAL, *([f"urial:{row.urial_file}", row.urial_file]
                                  if row.urial_file else [])}
    for c in score["comparisons"]:
        flip = c["left"] in theirs and c["right"] in mine
        if not flip and not (c["left"] in mine and c["right"] in theirs):
            continue
        rate, ci = c["win_rate"], c["ci95"]
        row.review = {"win_rate": None if rate is None else (1 - rate if flip else rate),
                      "ci95": None if ci is None else ([1 - ci[1], 1 - ci[0]] if flip else ci),
                      "pairs": c["pairs"], "raters": c["raters"], "folder": str(folder),
                      "comparison": f"{c['left']} vs {c['right']}"}
        row.review_missing = None
        return
    names = ", ".join(f"{c['left']} vs {c['right']}" for c in score["comparisons"]) or "none"
    row.review_missing = (f"{folder} has no comparison of the bundle ({'/'.join(sorted(mine))}) "
                          f"with inst_1k; its comparisons: {names}")


def parse_reviews(items: list[str], names: list[str]) -> dict[str, Path]:
    """`--review NAME=DIR` options: NAME a study of the table, DIR a review folder."""
    from icl_search.review import ReviewError, ReviewFolder

    out: dict[str, Path] = {}
    for item in items:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise CompareError(f"--review {item!r}: expected NAME=DIR (a study name and a "
                               "review folder)")
        if name not in names:
            raise CompareError(f"--review {item!r}: no study named {name!r} in the table "
                               f"(studies: {', '.join(names)})")
        try:
            ReviewFolder(folder)
        except ReviewError as exc:
            raise CompareError(f"--review {item!r}: {exc}") from None
        out[name] = Path(folder)
    return out
