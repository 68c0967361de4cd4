"""The optimisation study: config (`config`), search space (`space`), batched evaluation
(`evaluate`), building the evaluator (`build`), Optuna storage, locks and heartbeats
(`storage`), per-trial artifacts (`artifacts`), the ask -> evaluate -> tell loop (`runner`),
screening, the confirmation stage and export. Trial tables and reports live a floor up, in
icl_search.report.

    cfg = load_config("studies/demo.toml")
    evaluator = build_evaluator(cfg)
    run_study(cfg, evaluator)
"""

from icl_search.study.artifacts import load_trial_records
from icl_search.study.build import build_evaluator
from icl_search.study.config import ConfigError, StudyConfig, load_config
from icl_search.study.evaluate import Evaluator, QueryRecord, TrialEvaluation
from icl_search.study.runner import RunSummary, run_study
from icl_search.study.space import TrialSpec, baseline_params, suggest
from icl_search.study.storage import StudyError, load_study, open_study

__all__ = [
    "ConfigError", "Evaluator", "QueryRecord", "RunSummary", "StudyConfig", "StudyError",
    "TrialEvaluation", "TrialSpec", "baseline_params", "build_evaluator", "load_config",
    "load_study", "load_trial_records", "open_study", "run_study", "suggest",
]


def __getattr__(name: str):
    # old paths (`icl_search.study.trials_frame`): the one list is icl_search._deprecated
    from icl_search._deprecated import moved

    return moved(__name__, name)
