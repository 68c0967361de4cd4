"""Blind pairwise review: answers of two contexts to the same queries, shown as X and Y to
people (or an LLM) who do not know which is which, then unblinded into win rates.

    from icl_search.review import make_review, score_review
    make_review({"bundle": rows_a, "inst_1k": rows_b}, ["bundle:inst_1k"], "runs/review",
                readers=3, overlap=15)
    # icl-search review serve runs/review   (people rate in a browser)
    score_review("runs/review")["comparisons"]

The folder's layout in `folder`, pairing and sheets in `make`, the verdict files in
`verdicts`, the page in `web` (+ `static/`), the LLM rater in `rate`, unblinding in `score`.
"""

from icl_search.review.folder import ReviewError, ReviewFolder, check_rater, verdicts_path
from icl_search.review.make import (
    ReviewSummary,
    check_target,
    load_answers,
    make_review,
    make_review_from_files,
)
from icl_search.review.rate import RateSummary, rate_review
from icl_search.review.score import report_lines, score_lines, score_review
from icl_search.review.verdicts import Verdict, append_verdicts, read_verdicts

__all__ = [
    "RateSummary",
    "ReviewError",
    "ReviewFolder",
    "ReviewSummary",
    "Verdict",
    "append_verdicts",
    "check_rater",
    "check_target",
    "load_answers",
    "make_review",
    "make_review_from_files",
    "rate_review",
    "read_verdicts",
    "report_lines",
    "score_lines",
    "score_review",
    "verdicts_path",
]
