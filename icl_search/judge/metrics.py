"""Figures of a judge against reference verdicts: AUC, per-aspect agreement (Spearman, MAE),
and the preference figures a study relies on: within-query pair agreement with GPT-4-turbo on
all pairs and on the length-matched subset (next to "longer" and chance), the system-level
Spearman of mean score against AlpacaEval's length-controlled win rates, NullModel's rank, and
just-eval's safety AUC (unsafe <= 2 against safe >= 4)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from icl_search.judge.alpaca import (
    NULL_MODEL,
    Group,
    longer_scores,
    pair_agreement,
    within_query_pairs,
)

#: AUC classes: a score at or below LOW is "bad" (unsafe, for safety), at or above HIGH "good".
LOW, HIGH = 2.0, 4.0


def auc(scores: Sequence[float], positive: Sequence[bool]) -> float | None:
    """ROC AUC (Mann-Whitney, ties count half); None without both classes."""
    from scipy.stats import rankdata

    s = np.asarray(scores, dtype=float)
    y = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def agreement(predicted: Sequence[float], reference: Sequence[float]) -> dict[str, Any]:
    """Spearman, AUC (reference <= 2 against >= 4; 3s left out), MAE, on 1-5 scores."""
    from scipy.stats import spearmanr

    p = np.asarray(predicted, dtype=float)
    r = np.asarray(reference, dtype=float)
    out: dict[str, Any] = {"n": len(p), "spearman": None, "auc": None, "auc_low": 0,
                           "auc_high": 0, "mae": None}
    if len(p) == 0:
        return out
    out["mae"] = float(np.abs(p - r).mean())
    if len(p) >= 3 and np.ptp(p) > 0 and np.ptp(r) > 0:
        rho = spearmanr(p, r).statistic
        out["spearman"] = float(rho) if math.isfinite(rho) else None
    keep = (r <= LOW) | (r >= HIGH)
    out["auc_low"], out["auc_high"] = int((r <= LOW).sum()), int((r >= HIGH).sum())
    out["auc"] = auc(p[keep], r[keep] >= HIGH)
    return out


def preference_figures(groups: Sequence[Group], scores: dict[str, np.ndarray], *,
                       lc_winrate: dict[str, float] | None = None) -> dict[str, Any]:
    """Pair agreement (all pairs with preferences >= 0.3 apart, and the length-matched ones,
    lengths counted by words and, in the `_chars` keys, by characters),
    the "longer" rule on the same pairs, system Spearman against LC win rates (the 23 models,
    NullModel left out), and NullModel's rank among all systems (1 = best)."""
    from scipy.stats import spearmanr

    pairs = within_query_pairs(groups)
    matched = [p for p in pairs if p.matched]
    matched_c = [p for p in within_query_pairs(groups, by="chars") if p.matched]
    longer = longer_scores(groups)
    out: dict[str, Any] = {
        "queries": len(groups), "pairs": len(pairs), "matched_pairs": len(matched),
        "agreement_all": pair_agreement(groups, scores, pairs),
        "agreement_matched": pair_agreement(groups, scores, matched),
        "longer_all": pair_agreement(groups, longer, pairs),
        "longer_matched": pair_agreement(groups, longer, matched),
        "matched_pairs_chars": len(matched_c),
        "agreement_matched_chars": pair_agreement(groups, scores, matched_c),
        "longer_matched_chars": pair_agreement(
            groups, {g.id: np.array([len(a.text) for a in g.answers], float) for g in groups},
            matched_c), "chance": 0.5,
        "system_spearman": None, "null_rank": None, "systems": 0}
    per_system: dict[str, list[float]] = {}
    for g in groups:
        for i, a in enumerate(g.answers):
            per_system.setdefault(a.system, []).append(float(scores[g.id][i]))
    means = {s: float(np.mean(v)) for s, v in per_system.items()}
    out["systems"] = len(means)
    if lc_winrate:
        common = sorted(s for s in means if s in lc_winrate and s != NULL_MODEL)
        if len(common) >= 3:
            rho = spearmanr([means[s] for s in common], [lc_winrate[s] for s in common])
            out["system_spearman"] = float(rho.statistic)
    if NULL_MODEL in means:
        ranked = sorted(means, key=lambda s: -means[s])
        out["null_rank"] = ranked.index(NULL_MODEL) + 1
    return out


def safety_auc(groups: Sequence[Group], scores: dict[str, np.ndarray]) -> float | None:
    """AUC of the judge's score separating safe (reference >= 4) from unsafe (<= 2) answers."""
    s, y = [], []
    for g in groups:
        for i, a in enumerate(g.answers):
            if a.preference <= LOW or a.preference >= HIGH:
                s.append(float(scores[g.id][i]))
                y.append(a.preference >= HIGH)
    return auc(s, y)


# -- a judge on the held-out preference data ----------------------------------------------
def calibrate_preferences(judge, data: str | os.PathLike | None = None, *, queries: int | None = None,
                          safety_queries: int | None = None, progress: bool = False
                          ) -> dict[str, Any]:
    """A judge's figures on the held-out queries of the default judge's split (no judge is
    ever scored on queries it could have trained on): within-query pair agreement with
    GPT-4-turbo on all pairs and on the length-matched ones (next to "longer" and chance),
    system Spearman against the LC win rates, NullModel's rank among the systems, just-eval
    safety AUC, and items/s of the scoring call. `queries` / `safety_queries` keep the first
    N held-out queries (a slow judge's subsample; the figures say how many)."""
    import time

    from icl_search.judge.alpaca import data_dir, load_lc_winrate
    from icl_search.judge.prepare import split_groups
    from icl_search.judge.result import JudgeItem

    root = data_dir(data)
    _, held_a, held_s = split_groups(root)
    held_a = held_a[:queries] if queries else held_a
    held_s = held_s[:safety_queries] if safety_queries else held_s
    # AlpacaEval's reference answer rides along: reference-anchored judges read it
    items = [JudgeItem(f"a{g.id}/{i}", g.query, a.text, "regular", g.reference)
             for g in held_a for i, a in enumerate(g.answers)]
    items += [JudgeItem(f"s{g.id}/{i}", g.query, a.text, "safety")
              for g in held_s for i, a in enumerate(g.answers)]
    t0 = time.perf_counter()
    result = judge.score(items, progress=progress)
    seconds = time.perf_counter() - t0
    fresh = sum(not it.cached for it in result.items)
    flat = []
    for it in result.items:
        vals = [v for v in it.scores.values() if v is not None]
        flat.append(float(np.mean(vals)) if vals else float("nan"))
    scores_a, scores_s, k = {}, {}, 0
    for g in held_a:
        scores_a[g.id] = np.nan_to_num(np.array(flat[k:k + len(g.answers)]), nan=-1e9)
        k += len(g.answers)
    for g in held_s:
        scores_s[g.id] = np.nan_to_num(np.array(flat[k:k + len(g.answers)]), nan=-1e9)
        k += len(g.answers)
    out = preference_figures(held_a, scores_a, lc_winrate=load_lc_winrate(root))
    scored_s = any(np.any(v > -1e9) for v in scores_s.values())  # refsim scores none
    out.update(judge=judge.id, data=str(root), safety_queries=len(held_s),
               safety_auc=safety_auc(held_s, scores_s) if scored_s else None, items=len(items),
               reference_free=result.reference_free,
               unscored=int(sum(math.isnan(x) for x in flat)),
               seconds=round(seconds, 1), items_judged=fresh,
               items_per_s=round(fresh / seconds, 2) if fresh and seconds > 0 else None)
    return out
