"""An LLM rater: every pair of a review through the project's pairwise judge
(`icl_search.feedback.pairwise.PairwiseJudge`), which asks each pair in both orders and
counts a preference only when both orders agree (else a tie). Verdicts go to the same
verdict format as a person's, under the rater name `llm:SPEC`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from icl_search.review.folder import LLM_PREFIX, ReviewFolder, verdicts_path
from icl_search.review.verdicts import append_verdicts, read_verdicts

#: PairwiseJudge's outcome for (candidate = X, baseline = Y) -> the verdict.
_VERDICT = {"win": "X", "loss": "Y", "tie": "tie"}


@dataclass
class RateSummary:
    rater: str
    path: Path
    rated: int
    already: int
    missing: list[tuple[str, str]]  # (pair, reason) the judge gave no verdict for

    def line(self) -> str:
        return (f"{self.rater}: {self.rated} pairs rated now, {self.already} rated before, "
                f"{len(self.missing)} without a verdict -> {self.path}")


def rate_review(folder: str | Path, spec: str, *, judge=None, batch: int = 16,
                progress: Callable[[int], None] | None = None,
                **judge_opts: Any) -> RateSummary:
    """Rate every pair of `folder` not yet rated by `llm:SPEC`. `judge` is a ready `Judge`
    (else `make_judge(spec, **judge_opts)`). Verdicts are appended batch by batch, so an
    interrupted run keeps what it rated and a rerun asks only for the rest."""
    from icl_search.feedback.pairwise import PairItem, PairwiseJudge

    rf = ReviewFolder(folder)
    rater = LLM_PREFIX + spec
    path = verdicts_path(rf.path, rater)
    done = {v.pair for v in read_verdicts(path, rf.pairs)} if path.exists() else set()
    todo = [p for pid, p in sorted(rf.pairs.items()) if pid not in done]
    if judge is None:
        from icl_search.judge import make_judge

        judge = make_judge(spec, **judge_opts)
    pj = PairwiseJudge(judge)
    missing: list[tuple[str, str]] = []
    rated = 0
    for start in range(0, len(todo), batch):
        chunk = todo[start:start + batch]
        res = pj.compare([PairItem(p.pair, p.query, p.x, p.y) for p in chunk])
        rows = []
        for o in res.outcomes:
            if o.outcome not in _VERDICT:
                missing.append((o.id, o.reason))
                continue
            rows.append({"pair": o.id, "verdict": _VERDICT[o.outcome], "sheet": None,
                         "orders": list(o.orders), "judge": pj.id})
        if rows:
            append_verdicts(rf.path, rater, rows)
        rated += len(rows)
        if progress is not None:
            progress(len(chunk))
    return RateSummary(rater, path, rated, len(done), missing)
