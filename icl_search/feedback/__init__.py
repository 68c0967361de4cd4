"""Feedback beyond one pointwise judge: rule checks, a reward model, pairwise preference against
a baseline context, and their weighted combination in a study.

    from icl_search.feedback import RuleChecker, RewardScorer, PairwiseJudge, PairItem
    RuleChecker().check([{"id": "1", "query": q, "answer": a}]).counts   # what each rule caught
    RewardScorer("reward:/models/rm").score([(q, a)])                     # raw + calibrated 1-5
    PairwiseJudge(make_judge("default")).compare([PairItem("1", q, cand, base)]).win_rate

Rules in `rules`, reward models in `reward`, the pairwise rubric in `templates/pairwise.txt`
read by `pairwise`, the combination (and a study's `[feedback]` section) in `combine`.
"""

from icl_search.feedback.combine import (
    SOURCES,
    Feedback,
    TrialFeedback,
    feedback_from_config,
    rules_result,
)
from icl_search.feedback.pairwise import (
    PairItem,
    PairOutcome,
    PairwiseJudge,
    PairwiseResult,
    read_preference,
    wilson_interval,
)
from icl_search.feedback.reward import (
    RewardError,
    RewardScore,
    RewardScorer,
    make_reward,
    parse_reward_spec,
)
from icl_search.feedback.rules import (
    RULES,
    RuleChecker,
    RuleHit,
    RuleItem,
    RuleResult,
    check_rules,
    detect_language,
    is_harmful,
    is_refusal,
    repeated_share,
)

__all__ = [
    "RULES",
    "SOURCES",
    "Feedback",
    "PairItem",
    "PairOutcome",
    "PairwiseJudge",
    "PairwiseResult",
    "RewardError",
    "RewardScore",
    "RewardScorer",
    "RuleChecker",
    "RuleHit",
    "RuleItem",
    "RuleResult",
    "TrialFeedback",
    "check_rules",
    "detect_language",
    "feedback_from_config",
    "is_harmful",
    "is_refusal",
    "make_reward",
    "parse_reward_spec",
    "read_preference",
    "repeated_share",
    "rules_result",
    "wilson_interval",
]
