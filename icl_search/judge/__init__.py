"""The LLM judge: just-eval multi-aspect and safety scoring, chosen by one spec string.

    from icl_search.judge import make_judge, JudgeItem
    judge = make_judge("default", cache=Cache())          # or "dspy:openai/gpt-4o-mini", ...
    result = judge.score([JudgeItem("1", query, response, "regular")], min_coverage=0.9)
    result.overall              # unweighted mean of the aspect means (just-eval)
    result.items[0].scores      # {"helpfulness": 4.2, ...}; None where the judge gave none
    result.coverage             # {"helpfulness": Coverage(judged, total), ...}

Rubrics live in `templates/*.txt`; spec grammar in `icl_search.judge.judge`; agreement with a
reference judge in `icl_search.judge.calibration`; a cheap learned judge trained on verdicts
(`distilled:DIR`) in `icl_search.judge.distill`; the embedded default, a reward judge trained on
within-query preferences with length partialled out, in `icl_search.judge.reward` / `prepare`.
"""

from icl_search.judge.backends import ChatBackend, EngineBackend, JudgeError, expected_score
from icl_search.judge.distill import distill
from icl_search.judge.judge import (
    DEFAULT_JUDGE,
    Judge,
    make_judge,
    needs_reference,
    parse_judge_spec,
    require_references,
    score,
    to_item,
)
from icl_search.judge.learned import DistilledBackend, RewardBackend
from icl_search.judge.parsing import Parsed, coerce_score, parse_judgement
from icl_search.judge.records import DistillError, load_records, reference_records
from icl_search.judge.result import (
    Coverage,
    CoverageError,
    ItemJudgement,
    JudgeItem,
    JudgeResult,
    LengthControlled,
    count_words,
    length_controlled,
)
from icl_search.judge.rubric import ALL_ASPECTS, ASPECTS, SAFETY, Rubric, RubricError, RubricSet

__all__ = [
    "ALL_ASPECTS",
    "ASPECTS",
    "DEFAULT_JUDGE",
    "SAFETY",
    "ChatBackend",
    "Coverage",
    "CoverageError",
    "DistillError",
    "DistilledBackend",
    "EngineBackend",
    "ItemJudgement",
    "Judge",
    "JudgeError",
    "JudgeItem",
    "JudgeResult",
    "LengthControlled",
    "Parsed",
    "RewardBackend",
    "Rubric",
    "RubricError",
    "RubricSet",
    "coerce_score",
    "count_words",
    "distill",
    "expected_score",
    "length_controlled",
    "load_records",
    "make_judge",
    "needs_reference",
    "parse_judge_spec",
    "parse_judgement",
    "reference_records",
    "require_references",
    "score",
    "to_item",
]
