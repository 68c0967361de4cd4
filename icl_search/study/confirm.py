"""The confirmation stage: what a study's best trials score on queries it never searched on.

After the trial budget (or on `icl-search study confirm`), the top N trials by search score and
the baseline(s) (the project's baseline context, and a URIAL prompt file when
`search.baseline.urial` names one) are evaluated on the confirm split with the study's judge and
decoding. Per candidate: the confirm score (mean per-query judge score, with a 95% bootstrap
interval), the paired per-query difference against each baseline (95% bootstrap interval,
scipy.stats.bootstrap BCa, and a two-sided Wilcoxon signed-rank p-value, scipy.stats.wilcoxon),
and the shrinkage: the same per-query mean on the search split minus the confirm score.

Storage: every candidate's per-query scores go into the study's user attrs as soon as its
group is evaluated (the trials and the project's baseline share engine batches; the URIAL file
is a group of its own), keyed by the confirm set, judge and decoding (a fingerprint) and the
context's spec, so the stage resumes after a kill, every worker sees the results, and nothing is
evaluated twice (identical contexts in several trials share one entry). The statistics are
recomputed from the stored scores whenever they are read (fixed bootstrap seed).
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from icl_search.errors import IclSearchError
from icl_search.study.config import StudyConfig
from icl_search.study.space import TrialSpec, baseline_params

CONFIRM_ATTR = "confirm"
TEST = "Wilcoxon signed-rank, two-sided"
#: A gain is significant only when the 95% interval excludes 0 *and* p < ALPHA.
ALPHA = 0.05
BASELINE = "baseline"


class ConfirmError(IclSearchError, ValueError):
    """The confirmation stage cannot run (no confirm set configured, no finished trial)."""


# -- statistics ----------------------------------------------------------------------------
def _clean(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def mean_interval(values: np.ndarray, seed: int = 0) -> tuple[float | None, float | None]:
    """95% bootstrap interval of the mean (BCa; percentile where BCa is undefined)."""
    from scipy.stats import bootstrap

    if len(values) < 2:
        return None, None
    if np.allclose(values, values[0]):
        return float(values[0]), float(values[0])
    ci = None
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = bootstrap((values,), np.mean, confidence_level=0.95, n_resamples=9999,
                            method=method, rng=np.random.default_rng(seed))
        ci = res.confidence_interval
        if math.isfinite(ci.low) and math.isfinite(ci.high):
            break
    return _clean(ci.low), _clean(ci.high)


@dataclass
class Gain:
    """A candidate against one baseline on the queries both have a score for."""

    baseline: str
    mean: float | None
    low: float | None
    high: float | None
    p_value: float | None
    n: int
    test: str = TEST

    @property
    def _interval_excludes_zero(self) -> bool:
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)

    @property
    def _p_below(self) -> bool:
        return self.p_value is not None and self.p_value < ALPHA

    @property
    def significant(self) -> bool:
        """Both tests agree: the 95% interval excludes 0 and the Wilcoxon p is below 0.05.
        (At n of 10-40 the bootstrap interval and the rank test can disagree; one alone is
        not called significant.)"""
        return self._interval_excludes_zero and self._p_below

    @property
    def disagreement(self) -> str | None:
        """Which of the two tests alone saw a difference (None when they agree)."""
        if self._interval_excludes_zero and not self._p_below:
            return f"the interval excludes 0 but Wilcoxon p={_f(self.p_value)}"
        if self._p_below and not self._interval_excludes_zero:
            return f"Wilcoxon p={_f(self.p_value)} but the interval includes 0"
        return None

    @property
    def verdict(self) -> str:
        """'significant', 'significantly worse' or 'not significant (...)', naming the test
        that disagreed."""
        if self.significant:
            return "significant" if (self.mean or 0) > 0 else "significantly worse"
        why = self.disagreement
        return "not significant" + (f" ({why})" if why else "")

    def to_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "mean": self.mean,
                "interval": None if self.low is None else [self.low, self.high],
                "p_value": self.p_value, "n": self.n, "test": self.test}

    def report(self) -> dict[str, Any]:
        """`to_dict` (the bundle's `ConfirmGain` fields) plus the verdict of both tests."""
        return {**self.to_dict(), "significant": self.significant, "verdict": self.verdict}


def paired_gain(a: dict[str, float | None], b: dict[str, float | None], name: str) -> Gain:
    from scipy.stats import wilcoxon

    ids = [q for q, v in a.items() if v is not None and b.get(q) is not None]
    d = np.array([a[q] - b[q] for q in ids], dtype=float)
    if not len(d):
        return Gain(name, None, None, None, None, 0)
    low, high = mean_interval(d)
    if np.all(d == 0):
        p = 1.0
    elif len(d) < 2:
        p = None
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p = _clean(wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)
    return Gain(name, float(d.mean()), low, high, p, len(d))


# -- storage -------------------------------------------------------------------------------
def spec_key(spec: TrialSpec) -> str:
    blob = json.dumps({k: v for k, v in spec.to_dict().items() if k != "extra"}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _entry_attr(fp: str, key: str) -> str:
    return f"{CONFIRM_ATTR}:{fp}:{key}"


@dataclass
class Candidate:
    label: str  # "trial 3", "baseline", "urial:inst_1k.txt"
    role: str  # "trial", "baseline" or "urial"
    key: str
    trial: int | None
    spec: TrialSpec
    search: float | None  # mean per-query score on the search split


@dataclass
class Row:
    """One confirmed candidate, with its statistics."""

    label: str
    role: str
    trial: int | None
    search: float | None
    confirm: float | None
    low: float | None
    high: float | None
    n: int
    gains: list[Gain] = field(default_factory=list)

    @property
    def shrinkage(self) -> float | None:
        if self.search is None or self.confirm is None:
            return None
        return self.search - self.confirm


@dataclass
class Summary:
    rows: list[Row]
    n_queries: int
    judge: str
    evaluated: int = 0  # candidates evaluated by this call (0: everything was stored)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def best(self) -> Row | None:
        """The candidate the export takes: the trial with the highest confirm score, or the
        baseline when no trial beat it on the confirm set (ties go to the baseline)."""
        base = self.baseline
        trials = [r for r in self.rows if r.role == "trial" and r.confirm is not None]
        top = max(trials, key=lambda r: r.confirm, default=None)
        if base is not None and base.confirm is not None and (
                top is None or top.confirm <= base.confirm):
            return base
        return top

    @property
    def baseline(self) -> Row | None:
        return next((r for r in self.rows if r.role == "baseline"), None)

    @property
    def beat_baseline(self) -> bool:
        b = self.best
        return b is not None and b.role == "trial"

    def sentence(self) -> str:
        """One sentence: did the exported context beat the baseline, and is it significant."""
        best = self.best
        if best is None:
            return "No candidate has a confirm score yet."
        if not self.beat_baseline:
            return (f"No trial beat the baseline on the confirm set (n={self.n_queries}): the "
                    f"export is the baseline (confirm score {_f(best.confirm)}).")
        parts = []
        for g in best.gains:
            parts.append(f"{_s(g.mean)} over {g.baseline} (95% CI {_s(g.low)} to {_s(g.high)}, "
                         f"n={g.n}, Wilcoxon p={_f(g.p_value)}: {g.verdict})")
        return (f"{best.label.capitalize()} is the confirmed best (confirm score "
                f"{_f(best.confirm)}): " + "; ".join(parts) + ".")

    def to_dict(self) -> dict[str, Any]:
        return {"n_queries": self.n_queries, "judge": self.judge,
                "rows": [{"label": r.label, "role": r.role, "trial": r.trial, "search": r.search,
                          "confirm": r.confirm, "interval": [r.low, r.high], "n": r.n,
                          "shrinkage": r.shrinkage, "gains": [g.report() for g in r.gains]}
                         for r in self.rows],
                "best": self.best.label if self.best else None,
                "beat_baseline": self.beat_baseline, "sentence": self.sentence()}


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:+.3f}"


def _search_mean(trial: optuna.trial.FrozenTrial | None) -> float | None:
    vals = [v for v in ((trial.user_attrs.get("per_query") or {}).values() if trial else ())
            if v is not None]
    return float(np.mean(vals)) if vals else None


def summarize(study: optuna.Study) -> Summary | None:
    """The stored confirmation of a study (None when it was never confirmed)."""
    plan = study.user_attrs.get(CONFIRM_ATTR)
    if not plan:
        return None
    attrs = study.user_attrs
    scores: dict[str, dict[str, float | None]] = {}
    rows = []
    for c in plan["candidates"]:
        entry = attrs.get(_entry_attr(plan["fingerprint"], c["key"]))
        if entry is None:
            continue
        pq = entry["per_query"]
        scores[c["label"]] = pq
        vals = np.array([v for v in pq.values() if v is not None], dtype=float)
        low, high = mean_interval(vals)
        rows.append(Row(c["label"], c["role"], c["trial"], c["search"],
                        float(vals.mean()) if len(vals) else None, low, high, len(vals)))
    for r in rows:
        r.gains = [paired_gain(scores[r.label], scores[b], b) for b in plan["baselines"]
                   if b in scores and b != r.label]
    return Summary(rows, plan["n_queries"], plan["judge"])


# -- the stage -----------------------------------------------------------------------------
def candidates(study: optuna.Study, cfg: StudyConfig, pool_ids: list[str], top: int
               ) -> list[Candidate]:
    """The top `top` complete trials by search score (one per distinct context), then the
    project's baseline. (The URIAL baseline is added by `confirm`, which reads its file.)"""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    base_trial = next((t for t in complete if t.user_attrs.get("role") == "baseline"), None)
    p = baseline_params(cfg, pool_ids)
    base_spec = TrialSpec(p["system"], p["k"], p.get("strategy", "none"),
                          tuple(p[f"ex_{i}"] for i in range(p["k"])))
    seen = {spec_key(base_spec)}
    out = []
    for t in sorted((t for t in complete if "spec" in t.user_attrs),
                    key=lambda t: -t.values[0]):
        spec = TrialSpec.from_dict(t.user_attrs["spec"])
        key = spec_key(spec)
        if key in seen:
            continue
        seen.add(key)
        out.append(Candidate(f"trial {t.number}", "trial", key, t.number, spec, _search_mean(t)))
        if len(out) == top:
            break
    out.append(Candidate(BASELINE, "baseline", spec_key(base_spec),
                         base_trial.number if base_trial else None, base_spec,
                         _search_mean(base_trial)))
    return out


def confirm(study: optuna.Study, cfg: StudyConfig, evaluator, *, top: int | None = None,
            say: Callable[[str], None] | None = None, embed=None) -> Summary:
    """Evaluate the candidates missing from the study storage on the confirm set; return the
    statistics of all of them. `evaluator` is the study's (search-split) Evaluator."""
    from icl_search.study.splits import load_splits

    say = say or (lambda m: None)
    if not cfg.eval.has_confirm:
        raise ConfirmError(f"{cfg.source}: no confirm set: add eval.confirm (a query file) or "
                           "eval.confirm_fraction to the [eval] section")
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise ConfirmError(f"study {cfg.name!r} has no finished trial to confirm")
    splits = load_splits(cfg, embed=embed)
    conf = evaluator.with_queries(splits.confirm)
    blob = json.dumps([splits.fingerprint, evaluator.judge.id, repr(evaluator.params),
                       evaluator.template.to_dict()], sort_keys=True, default=str)
    fp = hashlib.sha256(blob.encode()).hexdigest()[:12]
    cands = candidates(study, cfg, evaluator.pool.ids, top or cfg.eval.confirm_top)
    urial_ev = None
    if cfg.search.baseline.urial:
        urial_ev, spec = _urial(cfg, evaluator, splits.confirm)
        cands.append(Candidate(f"urial:{cfg.path(cfg.search.baseline.urial).name}", "urial",
                               "urial-" + spec_key(spec) + _file_digest(cfg), None, spec, None))
    baselines = [c.label for c in cands if c.role != "trial"]
    plan = {"fingerprint": fp, "n_queries": len(splits.confirm), "judge": evaluator.judge.id,
            "baselines": baselines,
            "candidates": [{"label": c.label, "role": c.role, "key": c.key, "trial": c.trial,
                            "search": c.search} for c in cands]}
    if study.user_attrs.get(CONFIRM_ATTR) != plan:
        study.set_user_attr(CONFIRM_ATTR, plan)
    positions = list(range(len(splits.confirm)))
    chunk = max(1, cfg.optuna.chunk_size)
    evaluated = 0
    stats = {"prompts": 0, "generated": 0, "gen_cached": 0, "judged": 0, "judge_cached": 0}
    missing = []
    for c in cands:
        if _entry_attr(fp, c.key) in study.user_attrs:
            say(f"confirm {c.label}: stored")
        else:
            missing.append(c)
    # The candidates that share an evaluator go through the engine together (one batch per
    # chunk, as `batch_trials` does for trials): the decode steps, not the prompts, are what a
    # CPU pays for. Each group is stored as soon as it is done.
    for ev, group in ((conf, [c for c in missing if c.role != "urial"]),
                      (urial_ev, [c for c in missing if c.role == "urial"])):
        if not group:
            continue
        records: list[list] = [[] for _ in group]
        names = ", ".join(c.label for c in group)
        for start in range(0, len(positions), chunk):
            rows = ev.evaluate([c.spec for c in group], positions[start:start + chunk],
                               keep_prompts=False)
            for acc, r in zip(records, rows):
                acc.extend(r)
            say(f"confirm {names}: {len(records[0])}/{len(positions)} queries")
        for c, recs in zip(group, records):
            study.set_user_attr(_entry_attr(fp, c.key), {
                "spec": c.spec.to_dict(),
                "per_query": {r.query_id: (r.judgement.overall if r.judgement else None)
                              for r in recs}})
            evaluated += 1
    for e in (conf, urial_ev):
        for k in stats:
            stats[k] += getattr(e.stats, k) if e is not None else 0
    summary = summarize(study)
    assert summary is not None
    summary.evaluated, summary.stats = evaluated, stats
    return summary


def _file_digest(cfg: StudyConfig) -> str:
    data = cfg.path(cfg.search.baseline.urial).read_bytes()
    return hashlib.sha256(data).hexdigest()[:8]


def _urial(cfg: StudyConfig, evaluator, queries):
    """An evaluator and spec for the URIAL prompt file: its preamble and examples, rendered
    with the study's template, budget and decoding like every trial."""
    from icl_search.pool import Pool, read_urial

    path = cfg.path(cfg.search.baseline.urial)
    doc = read_urial(path, evaluator.template)
    shots = doc.answered
    name = f"urial:{path.name}"
    ev = evaluator.with_queries(queries, pool=Pool(shots, path, doc.system),
                                systems={name: doc.system})
    spec = TrialSpec(name, len(shots), "fixed" if shots else "none",
                     tuple(e.id for e in shots))
    return ev, spec


def table_lines(summary: Summary) -> list[str]:
    """Markdown: search vs confirm per candidate, gains against each baseline, the verdict."""
    names = sorted({g.baseline for r in summary.rows for g in r.gains},
                   key=lambda b: (b != BASELINE, b))
    head = ["candidate", "search", "confirm (95% CI)", "shrinkage"] + \
        [f"gain vs {b} (95% CI, p)" for b in names]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in summary.rows:
        gains = {g.baseline: g for g in r.gains}
        cells = [r.label, _f(r.search), f"{_f(r.confirm)} ({_f(r.low)} to {_f(r.high)})",
                 _s(r.shrinkage)]
        for b in names:
            g = gains.get(b)
            cells.append("-" if g is None else
                         f"{_s(g.mean)} ({_s(g.low)} to {_s(g.high)}, p={_f(g.p_value)})")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def report_lines(study: optuna.Study) -> list[str]:
    """The confirmation section of `study report` (nothing when never confirmed)."""
    s = summarize(study)
    if s is None:
        return []
    intro = (f"On {s.n_queries} confirm queries the search never saw, judge `{s.judge}`; "
             f"intervals: 95% bootstrap (BCa); p: {TEST}.")
    return ["", "## Confirmation", "", intro, "", *table_lines(s), "", s.sentence()]
