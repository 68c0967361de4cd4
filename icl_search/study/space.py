"""The search space: how an Optuna trial's parameters become a URIAL context to evaluate.

Parameters (define-by-run, so they are conditional):

- `system`: categorical over the preamble files (by file name).
- `k`: int in `search.k` — examples per prompt; `k = 0` is the preamble alone (URIAL's
  `inst_only`), and no other parameter is drawn.
- `strategy`: categorical over `search.strategies` (fixed / knn / mmr / hybrid / balanced).
- fixed set, **slot encoding**: `ex_0 .. ex_{k-1}`, each a categorical over the candidate ids;
  slot `i` is the i-th example in the prompt, so order is part of the encoding (the last slot
  sits next to the query). A repeated id in a later slot is skipped (recorded as
  `effective_k`). Why slots rather than one categorical over k-subsets: the number of subsets
  explodes combinatorially, while per-slot categoricals let TPE learn which examples help at
  which position with a few dozen trials; multivariate TPE (`group=True`) keeps the slots
  that belong to one `k` together.
- hybrid: `ex_0 .. ex_{a-1}` anchors (a = min(search.anchors, k)) as above, the rest
  retrieved per query by kNN.
- `mmr_lambda`: float in `search.mmr_lambda` (mmr only).
- `temperature`, `repetition_penalty`: floats, only when the config gives a range.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna

from icl_search.study.config import StudyConfig


@dataclass(frozen=True)
class TrialSpec:
    """Everything a trial evaluates, in plain data (stored as the trial's user attrs)."""

    system_name: str
    k: int
    strategy: str  # "none" when k == 0
    fixed_ids: tuple[str, ...] = ()
    mmr_lambda: float | None = None
    temperature: float | None = None
    repetition_penalty: float | None = None
    extra: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["fixed_ids"] = list(self.fixed_ids)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrialSpec:
        d = dict(d)
        d["fixed_ids"] = tuple(d.get("fixed_ids") or ())
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def system_choices(cfg: StudyConfig) -> dict[str, Path]:
    """Preamble name (file name, or the relative path when names clash) -> file."""
    paths = [cfg.path(p) for p in cfg.search.system_prompts]
    names = [p.name for p in paths]
    if len(set(names)) != len(names):
        names = list(cfg.search.system_prompts)
    return dict(zip(names, paths))


def suggest(trial: optuna.Trial, cfg: StudyConfig, candidate_ids: list[str]) -> TrialSpec:
    s = cfg.search
    system = trial.suggest_categorical("system", list(system_choices(cfg)))
    k = trial.suggest_int("k", s.k[0], s.k[1])
    temperature = (trial.suggest_float("temperature", *s.temperature)
                   if s.temperature else None)
    rep = (trial.suggest_float("repetition_penalty", *s.repetition_penalty)
           if s.repetition_penalty else None)
    if k == 0:
        return TrialSpec(system, 0, "none", temperature=temperature, repetition_penalty=rep)
    strategy = trial.suggest_categorical("strategy", list(s.strategies))
    slots = k if strategy == "fixed" else min(s.anchors, k) if strategy == "hybrid" else 0
    ids: list[str] = []
    for i in range(slots):
        pick = trial.suggest_categorical(f"ex_{i}", candidate_ids)
        if pick not in ids:
            ids.append(pick)
    lam = trial.suggest_float("mmr_lambda", *s.mmr_lambda) if strategy == "mmr" else None
    return TrialSpec(system, k, strategy, tuple(ids), lam, temperature, rep)


def baseline_params(cfg: StudyConfig, pool_ids: list[str]) -> dict[str, Any]:
    """The URIAL-style default: the first (or named) preamble with a fixed example set."""
    b = cfg.search.baseline
    names = list(system_choices(cfg))
    system = names[cfg.search.system_prompts.index(b.system)] if b.system else names[0]
    ids = b.example_ids or pool_ids[:3]
    params: dict[str, Any] = {"system": system, "k": len(ids)}
    if ids:
        params["strategy"] = "fixed"
        params.update({f"ex_{i}": x for i, x in enumerate(ids)})
    return params


def make_sampler(cfg: StudyConfig) -> optuna.samplers.BaseSampler:
    if cfg.optuna.sampler == "random":
        return optuna.samplers.RandomSampler(seed=cfg.seed)
    # Optuna 5 changed TPE's defaults: state them. multivariate+group model the conditional
    # slots jointly; constant_liar keeps trials asked together (a batch, or parallel workers)
    # from all landing on the same point.
    return optuna.samplers.TPESampler(
        seed=cfg.seed, multivariate=True, group=True, constant_liar=True,
        n_startup_trials=cfg.optuna.n_startup_trials,
    )


def make_pruner(cfg: StudyConfig) -> optuna.pruners.BasePruner:
    if cfg.optuna.multi_objective or cfg.optuna.pruner == "none":
        return optuna.pruners.NopPruner()
    if cfg.optuna.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    # per-question scores against the best trial's: a paired signed-rank test
    return optuna.pruners.WilcoxonPruner(p_threshold=cfg.optuna.wilcoxon_p, n_startup_steps=4)
