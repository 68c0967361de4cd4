"""Multi-fidelity screening: a cheap judge (a distilled cross-encoder) scores every trial on the
whole evaluation set; the expensive judge is spent only on trials the cheap score ranks in the
top `judge.screen_top` fraction of the trials screened so far.

A trial the screen discards is told to Optuna as PRUNED, with no intermediate values: the cheap
score is on another judge's scale, so it is neither mixed into the objective nor shown to the
Wilcoxon pruner (which compares per-query values across trials); TPE counts such a trial among
its worse ones. The baseline trial always goes to the expensive judge (the report compares
against it), and so does a trial the screen could not score. With `screen_top = 1.0` every trial
is judged by both: an audit run that measures how often a given fraction would have discarded
the trial the expensive judge ranks best.

Per trial (user attributes): `screen_score` (the cheap overall), `screen_rank` (share of the
trials screened so far, this one included, with a strictly better cheap score: 0 is the best),
`screen_judge`, and `expensive_judge` (whether the expensive judge ran).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from icl_search.judge import JudgeResult


def resolve_spec(cfg, spec: str) -> str:
    """`distilled:DIR` with DIR relative to the config file's folder, like every other path."""
    kind, sep, rest = spec.partition(":")
    if kind in ("distilled", "reward", "anchored") and sep and rest and rest != "default":
        return f"{kind}:{cfg.path(rest)}"
    return spec


def make_screen(cfg, cache, say=print):
    """The cheap judge named by `judge.screen` (an `Evaluator`'s `screen` input), or None."""
    if not cfg.judge.screen:
        return None
    from icl_search.judge import make_judge

    say(f"loading the screening judge ({cfg.judge.screen}) ...")
    return make_judge(resolve_spec(cfg, cfg.judge.screen), cache=cache)


def screen_trials(study: optuna.Study, cfg, evaluator, trials: Sequence[optuna.Trial],
                  specs) -> dict[int, list]:
    """Screen a batch; returns {batch index: screen records} for the trials discarded."""
    positions = list(range(len(evaluator.queries)))
    recs = evaluator.evaluate(specs, positions, screen=True)
    scores = [JudgeResult([r.judgement for r in rows if r.judgement is not None]).overall
              for rows in recs]
    batch = {t.number for t in trials}
    seen = [t.user_attrs["screen_score"] for t in study.get_trials(deepcopy=False)
            if t.number not in batch and t.user_attrs.get("screen_score") is not None]
    pool = seen + [s for s in scores if s is not None]
    top = cfg.judge.screen_top
    discarded: dict[int, list] = {}
    for i, (t, s, rows) in enumerate(zip(trials, scores, recs, strict=True)):
        rank = None if s is None else sum(p > s for p in pool) / len(pool)
        keep = s is None or rank < top or t.user_attrs.get("role") == "baseline"
        t.set_user_attr("screen_score", s)
        t.set_user_attr("screen_rank", rank)
        t.set_user_attr("screen_judge", evaluator.screen.id)
        t.set_user_attr("expensive_judge", bool(keep))
        if not keep:
            t.set_user_attr("screened_out", True)
            t.set_user_attr("n_queries", len(rows))
            discarded[i] = rows
    return discarded


def screening_summary(study: optuna.Study, screen_top: float) -> dict[str, Any] | None:
    """What screening saved and what it risked; None when the study was not screened.

    `expensive_items_saved`: items the expensive judge did not see (screened-out trials times
    their queries). `new_best_discarded`: walking the trials in order, each time the expensive
    judge found a new best trial, would the screen (at `screen_top`) have discarded it? Only
    trials both judges scored count, so it is informative in an audit run (`screen_top = 1`)
    and trivially 0 in a screened run for the trials the screen let through.
    """
    from scipy.stats import spearmanr

    trials = [t for t in study.get_trials(deepcopy=False)
              if "screen_score" in t.user_attrs]
    if not trials:
        return None
    judged = [t for t in trials if t.user_attrs.get("expensive_judge")]
    out_ = [t for t in trials if t.user_attrs.get("screened_out")]
    both = sorted((t for t in judged if t.state == TrialState.COMPLETE and t.values
                   and t.user_attrs.get("screen_score") is not None), key=lambda t: t.number)
    best_value, events, discarded = None, 0, 0
    for t in both:
        if best_value is None or t.values[0] > best_value:
            best_value = t.values[0]
            events += 1
            rank = t.user_attrs.get("screen_rank")
            discarded += int(rank is not None and rank >= screen_top)
    summary: dict[str, Any] = {
        "screen_top": screen_top, "trials_screened": len(trials),
        "trials_expensive": len(judged), "trials_screened_out": len(out_),
        "expensive_items_saved": sum(t.user_attrs.get("n_queries") or 0 for t in out_),
        "expensive_items": sum(t.user_attrs.get("n_queries") or 0 for t in judged),
        "new_best_events": events, "new_best_discarded": discarded,
        "best_trial": None, "best_screen_rank_final": None, "spearman_screen_vs_judge": None,
    }
    if both:
        best = max(both, key=lambda t: t.values[0])
        all_scores = [t.user_attrs["screen_score"] for t in trials
                      if t.user_attrs.get("screen_score") is not None]
        s = best.user_attrs["screen_score"]
        summary["best_trial"] = best.number
        summary["best_screen_rank_final"] = sum(p > s for p in all_scores) / len(all_scores)
    if len(both) >= 3:
        x = np.array([t.user_attrs["screen_score"] for t in both])
        y = np.array([t.values[0] for t in both])
        if np.ptp(x) > 0 and np.ptp(y) > 0:
            summary["spearman_screen_vs_judge"] = float(spearmanr(x, y).statistic)
    return summary


def report_lines(study: optuna.Study, screen_top: float) -> list[str]:
    """The report's screening section (Markdown lines); empty when the study was not screened."""
    s = screening_summary(study, screen_top)
    if s is None:
        return []
    total = s["expensive_items"] + s["expensive_items_saved"]
    saved = s["expensive_items_saved"] / total if total else 0.0
    rho = s["spearman_screen_vs_judge"]
    lines = ["", "## Screening (multi-fidelity)", "",
             f"- cheap screen on every trial; expensive judge on the top {screen_top:.0%}: "
             f"{s['trials_expensive']} of {s['trials_screened']} trials",
             f"- expensive-judge items: {s['expensive_items']} judged, "
             f"{s['expensive_items_saved']} saved ({saved:.0%})",
             f"- new best trials found by the expensive judge: {s['new_best_events']}; the screen "
             f"would have discarded {s['new_best_discarded']} of them",
             f"- screen vs expensive judge over trials both scored: Spearman "
             f"{'-' if rho is None else f'{rho:.2f}'}"]
    if s["best_trial"] is not None:
        lines.append(f"- best trial {s['best_trial']}: screen rank {s['best_screen_rank_final']:.0%}"
                     f" among all screened trials (discarded at this fraction: "
                     f"{'yes' if s['best_screen_rank_final'] >= screen_top else 'no'})")
    return lines
