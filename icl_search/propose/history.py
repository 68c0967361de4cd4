"""Carrying the earlier rounds' finished trials into a round's study, so TPE starts each round
from everything scored so far instead of from scratch.

Why: every round is a new Optuna study (its categorical choices are fixed for its life), and a
fresh study throws away what TPE had learnt; in the simulator of `bench/search.py` that made
rounds lose to a fixed space under an equal budget, while rounds holding the earlier trials won.
A copy is built with `optuna.trial.create_trial` under the *round's* distributions (the dry run
of `suggest` below gives them: preamble and example choices only grow from round to round, so
an old value stays valid) and keeps the original's values, intermediate values (the Wilcoxon
pruner compares against the best trial's per-query reports) and user attrs (spec, scores,
artifact id: export, report and confirmation work on it), plus `copied_from`.

A trial whose prompts depend on the pool's other rows (kNN, MMR, hybrid, balanced) is copied
only when the round searches the same pool: after a restyle, the same parameters retrieve
other examples, so its old score would be wrong for the round. Preamble-only and fixed-set
trials render the same prompts from the grown pool and are always copied.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

COPIED_ATTR = "copied_trials"  # a round study's attr: how many earlier trials it holds
SOURCE = "copied_from"  # a copy's trial attr: {"study": name, "number": n}
POOL_FREE = ("none", "fixed")  # strategies whose prompts ignore the pool's other rows


def is_copy(t: FrozenTrial) -> bool:
    return SOURCE in t.user_attrs


def source_key(src: dict[str, Any]) -> tuple[str, int]:
    return src["study"], int(src["number"])


def _probe() -> optuna.Study:
    """An in-memory study that only asks: `round_distributions` runs `suggest` in it."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created" line
    try:
        return optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    finally:
        optuna.logging.set_verbosity(level)


def round_distributions(cfg, candidates: Sequence[str], params: dict[str, Any],
                        probe: optuna.Study | None = None) -> dict[str, Any] | None:
    """The distributions the round's `suggest` gives `params`, or None when they are no longer
    a point of the round's space (a value not among the choices)."""
    from icl_search.study.space import suggest

    probe = probe or _probe()
    probe.enqueue_trial(params)
    t = probe.ask()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "fixed parameter out of range": answered below
            suggest(t, cfg, list(candidates))
    except ValueError:
        return None
    return dict(t.distributions) if t.params == params else None


def history_trials(earlier: Iterable[optuna.Study], cfg, candidates: Sequence[str], *,
                   same_pool: Callable[[optuna.Study], bool] = lambda s: True,
                   baseline: dict[str, Any] | None = None,
                   have: set[tuple[str, int]] = frozenset()) -> tuple[list[FrozenTrial],
                                                                     dict[str, int]]:
    """The copies of every finished original trial of the `earlier` studies for a round with
    config `cfg` and example candidates `candidates`, minus those in `have` (copied before: a
    resumed copy step). A copy of the baseline (`baseline` = the round's baseline params) keeps
    its role; other roles become `copied_role`, as the round has reference trials of its own.
    Also returns what was left out and why (counts)."""
    out: list[FrozenTrial] = []
    skipped = {"other pool": 0, "outside the space": 0}
    probe = _probe()
    for study in earlier:
        pool_ok = same_pool(study)
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if is_copy(t) or t.values is None:
                continue
            src = {"study": study.study_name, "number": t.number}
            if source_key(src) in have:
                continue
            strategy = (t.user_attrs.get("spec") or {}).get("strategy")
            if not pool_ok and strategy not in POOL_FREE:
                skipped["other pool"] += 1
                continue
            dists = round_distributions(cfg, candidates, t.params, probe)
            if dists is None:
                skipped["outside the space"] += 1
                continue
            attrs = {k: v for k, v in t.user_attrs.items() if k != "role"}
            role = t.user_attrs.get("role")
            if role == "baseline" and t.params == baseline:
                attrs["role"] = role
            elif role:
                attrs["copied_role"] = role
            attrs[SOURCE] = src
            out.append(optuna.trial.create_trial(
                params=t.params, distributions=dists, values=list(t.values),
                user_attrs=attrs, intermediate_values=dict(t.intermediate_values)))
    return out, skipped


def original_trials(studies: Iterable[optuna.Study]) -> list[FrozenTrial]:
    """Every finished trial of the studies that is not a copy (each configuration once per
    evaluation, however many rounds hold it)."""
    return [t for s in studies
            for t in s.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.values is not None and not is_copy(t)]
