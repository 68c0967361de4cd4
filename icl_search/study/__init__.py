"""The optimisation study: config, search space, batched evaluation, Optuna storage, reports.

    cfg = load_config("studies/demo.toml")
    evaluator = build_evaluator(cfg)
    run_study(cfg, evaluator)
"""

from icl_search.study.config import ConfigError, StudyConfig, load_config
from icl_search.study.evaluate import Evaluator, QueryRecord, TrialEvaluation
from icl_search.study.runner import (
    RunSummary,
    StudyError,
    build_evaluator,
    load_trial_records,
    open_study,
    run_study,
    trials_frame,
)
from icl_search.study.space import TrialSpec, baseline_params, suggest

__all__ = [
    "ConfigError", "Evaluator", "QueryRecord", "RunSummary", "StudyConfig", "StudyError",
    "TrialEvaluation", "TrialSpec", "baseline_params", "build_evaluator", "load_config",
    "load_trial_records", "open_study", "run_study", "suggest", "trials_frame",
]
