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

Audit judges (`[judge] audit`) score the same confirm answers, stored beside (one entry per
candidate and audit judge, so adding one later pays for its scores only); the verdict
(`icl_search.study.verdict`) needs every judge to see a gain. Each candidate's confirm answers
are written as `id`/`query`/`answer` JSONL files under the study's artifacts
(`confirm/<fingerprint>/<label>.jsonl`, `answer_files`) for a blind review. Statistics live in
`icl_search.study.stats`, the Markdown in `icl_search.study.confirm_md`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from icl_search.errors import IclSearchError
from icl_search.hygiene import Hygiene, HygieneCounts
from icl_search.study import attrs
from icl_search.study.config import StudyConfig
from icl_search.study.confirm_md import section_lines, table_lines  # noqa: F401  (re-exported)
from icl_search.study.space import TrialSpec, baseline_params
from icl_search.study.stats import (  # noqa: F401  (re-exported: the earlier home of these)
    ALPHA,
    TEST,
    Gain,
    length_controlled_gain,
    mean_interval,
    paired_gain,
)
from icl_search.study.verdict import BASELINE, JudgeView, Row, Summary, decide

CONFIRM_ATTR = attrs.CONFIRM


class ConfirmError(IclSearchError, ValueError):
    """The confirmation stage cannot run (no confirm set configured, no finished trial)."""


# -- storage -------------------------------------------------------------------------------
def spec_key(spec: TrialSpec) -> str:
    blob = json.dumps({k: v for k, v in spec.to_dict().items() if k != "extra"}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _entry_attr(fp: str, key: str) -> str:
    return f"{CONFIRM_ATTR}:{fp}:{key}"


def _audit_attr(fp: str, key: str, judge: str) -> str:
    return f"{CONFIRM_ATTR}:{fp}:{key}:audit:{judge}"


@dataclass
class Candidate:
    label: str  # "trial 3", "baseline", "urial:inst_1k.txt"
    role: str  # "trial", "baseline" or "urial"
    key: str
    trial: int | None
    spec: TrialSpec
    search: float | None  # mean per-query score on the search split


def _search_mean(trial: optuna.trial.FrozenTrial | None) -> float | None:
    vals = [v for v in ((trial.user_attrs.get(attrs.PER_QUERY) or {}).values() if trial else ())
            if v is not None]
    return float(np.mean(vals)) if vals else None


def _view(judge: str, pq: dict[str, float | None]) -> JudgeView:
    vals = np.array([v for v in pq.values() if v is not None], dtype=float)
    low, high = mean_interval(vals)
    return JudgeView(judge, float(vals.mean()) if len(vals) else None, low, high, len(vals))


def _row(c: dict, entry: dict, audits: dict[str, dict], plan: dict) -> Row:
    hyg = HygieneCounts.of(Hygiene(**h) for h in entry.get(attrs.HYGIENE, {}).values() if h)
    words = list((entry.get(attrs.LENGTHS) or {}).values())
    safety = [entry["per_query"].get(q) for q in plan.get("safety", [])]
    safety = [v for v in safety if v is not None]
    views = [_view(plan["judge"], entry["per_query"])]
    views += [_view(j, audits[j]) for j in plan.get("audit", []) if j in audits]
    return Row(c["label"], c["role"], c["trial"], c["search"], views, hyg,
               float(np.mean(words)) if words else None,
               safety_mean=float(np.mean(safety)) if safety else None)


def summarize(study: optuna.Study) -> Summary | None:
    """The stored confirmation of a study (None when it was never confirmed)."""
    plan = study.user_attrs.get(CONFIRM_ATTR)
    if not plan:
        return None
    ua = study.user_attrs
    rows: dict[str, Row] = {}
    entries: dict[str, tuple[dict, dict[str, dict]]] = {}
    for c in plan["candidates"]:
        entry = ua.get(_entry_attr(plan["fingerprint"], c["key"]))
        if entry is None:
            continue
        audits = {j: a for j in plan.get("audit", [])
                  if (a := ua.get(_audit_attr(plan["fingerprint"], c["key"], j))) is not None}
        entries[c["label"]] = (entry, audits)
        rows[c["label"]] = _row(c, entry, audits, plan)
    safety_ids = set(plan.get("safety", []))
    for label, r in rows.items():
        entry, audits = entries[label]
        for b in plan["baselines"]:
            if b == label or b not in rows:
                continue
            be, ba = entries[b]
            for v in r.views:
                mine = entry["per_query"] if v.judge == plan["judge"] else audits[v.judge]
                theirs = be["per_query"] if v.judge == plan["judge"] else ba.get(v.judge)
                if theirs is None:
                    continue
                v.gains.append(paired_gain(mine, theirs, b))
                v.lc_gains.append(length_controlled_gain(
                    mine, theirs, entry.get(attrs.LENGTHS) or {}, be.get(attrs.LENGTHS) or {}, b))
            if safety_ids:
                pick = lambda pq: {q: v for q, v in pq.items() if q in safety_ids}
                r.safety.append(paired_gain(pick(entry["per_query"]), pick(be["per_query"]), b))
        if r.role == "trial":
            r.reasons = decide(r, rows, plan["baselines"])
    return Summary(list(rows.values()), plan["n_queries"], plan["judge"],
                   list(plan.get("audit", [])), plan.get(attrs.HYGIENE_FLOOR, True),
                   len(safety_ids))


def answer_files(cfg: StudyConfig, study: optuna.Study) -> dict[str, Path]:
    """Candidate label -> its confirm answers (JSONL: id, query, answer, category), for a blind
    review of the confirm answers (those written so far)."""
    plan = study.user_attrs.get(CONFIRM_ATTR) or {}
    folder = cfg.artifacts_path / "confirm" / plan.get("fingerprint", "-")
    return {c["label"]: p for c in plan.get("candidates", [])
            if (p := folder / f"{_slug(c['label'])}.jsonl").is_file()}


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-")


def _write_answers(cfg: StudyConfig, fp: str, label: str, records, queries) -> None:
    from icl_search.io import atomic_write

    by_id = {q.id: q for q in queries}
    folder = cfg.artifacts_path / "confirm" / fp
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_write(folder / f"{_slug(label)}.jsonl") as fh:
        for r in records:
            row = {"id": r.query_id, "query": r.query, "answer": r.answer,
                   "category": r.category}
            ref = getattr(by_id.get(r.query_id), "reference", None)
            if ref is not None:
                row["reference"] = ref
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


# -- the stage -----------------------------------------------------------------------------
def candidates(study: optuna.Study, cfg: StudyConfig, pool_ids: list[str], top: int
               ) -> list[Candidate]:
    """The top `top` complete trials by search score (one per distinct context), then the
    project's baseline. (The URIAL baseline is added by `confirm`, which reads its file.)"""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    base_trial = next((t for t in complete if t.user_attrs.get(attrs.ROLE) == "baseline"), None)
    p = baseline_params(cfg, pool_ids)
    base_spec = TrialSpec(p["system"], p["k"], p.get("strategy", "none"),
                          tuple(p[f"ex_{i}"] for i in range(p["k"])))
    seen = {spec_key(base_spec)}
    out = []
    for t in sorted((t for t in complete if attrs.SPEC in t.user_attrs),
                    key=lambda t: -t.values[0]):
        spec = TrialSpec.from_dict(t.user_attrs[attrs.SPEC])
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


def _plan(study, cfg, evaluator, splits, audit, top) -> tuple[dict, list[Candidate], Any]:
    blob = json.dumps([splits.fingerprint, evaluator.judge.id, repr(evaluator.params),
                       evaluator.template.to_dict(), evaluator.hygiene_floor],
                      sort_keys=True, default=str)
    fp = hashlib.sha256(blob.encode()).hexdigest()[:12]
    cands = candidates(study, cfg, evaluator.pool.ids, top or cfg.eval.confirm_top)
    urial_ev = None
    if cfg.search.baseline.urial:
        urial_ev, spec = _urial(cfg, evaluator, splits.confirm, audit)
        cands.append(Candidate(f"urial:{cfg.path(cfg.search.baseline.urial).name}", "urial",
                               "urial-" + spec_key(spec) + _file_digest(cfg), None, spec, None))
    plan = {"fingerprint": fp, "n_queries": len(splits.confirm), "judge": evaluator.judge.id,
            "audit": [a.id for a in audit], "baselines": [c.label for c in cands
                                                          if c.role != "trial"],
            "safety": [q.id for q in splits.confirm if q.category == "safety"],
            attrs.HYGIENE_FLOOR: evaluator.hygiene_floor,
            "candidates": [{"label": c.label, "role": c.role, "key": c.key, "trial": c.trial,
                            "search": c.search} for c in cands]}
    return plan, cands, urial_ev


def confirm(study: optuna.Study, cfg: StudyConfig, evaluator, *, top: int | None = None,
            say: Callable[[str], None] | None = None, embed=None,
            audit: list | None = None) -> Summary:
    """Evaluate the candidates missing from the study storage on the confirm set, with the
    study's judge and the audit judges (`audit`, default: built from `[judge] audit`); return
    the statistics and verdict of all of them. `evaluator` is the study's (search-split)
    Evaluator."""
    from icl_search.study.splits import load_splits

    say = say or (lambda m: None)
    if not cfg.eval.has_confirm:
        raise ConfirmError(f"{cfg.source}: no confirm set: add eval.confirm (a query file) or "
                           "eval.confirm_fraction to the [eval] section")
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise ConfirmError(f"study {cfg.name!r} has no finished trial to confirm")
    if audit is None:
        from icl_search.study.build import build_audit

        audit = build_audit(cfg, evaluator, say=say)
    splits = load_splits(cfg, embed=embed)
    conf = evaluator.with_queries(splits.confirm, audit=audit)
    plan, cands, urial_ev = _plan(study, cfg, evaluator, splits, audit, top)
    if study.user_attrs.get(CONFIRM_ATTR) != plan:
        study.set_user_attr(CONFIRM_ATTR, plan)
    evaluated = 0
    for ev, group in ((conf, [c for c in cands if c.role != "urial"]),
                      (urial_ev, [c for c in cands if c.role == "urial"])):
        todo = [c for c in group if _missing(study, plan, c)]
        for c in group:
            if c not in todo:
                say(f"confirm {c.label}: stored")
        if todo:
            evaluated += _evaluate_group(study, cfg, plan, ev, todo, splits.confirm, say)
    stats = {k: sum(getattr(e.stats, k) for e in (conf, urial_ev) if e is not None)
             for k in ("prompts", "generated", "gen_cached", "judged", "judge_cached")}
    summary = summarize(study)
    assert summary is not None
    summary.evaluated, summary.stats = evaluated, stats
    return summary


def _missing(study: optuna.Study, plan: dict, c: Candidate) -> bool:
    fp, ua = plan["fingerprint"], study.user_attrs
    return _entry_attr(fp, c.key) not in ua or any(
        _audit_attr(fp, c.key, j) not in ua for j in plan["audit"])


def _evaluate_group(study, cfg, plan, ev, group: list[Candidate], queries, say) -> int:
    """Generate and judge `group` on the confirm set (one engine batch per chunk, as
    `batch_trials` does for trials: a CPU pays for the decode steps, not the prompts); store
    each candidate's entry, its audit scores and its answer file. Generations and the study
    judge's verdicts come from the caches when only an audit judge is new."""
    positions = list(range(len(queries)))
    chunk = max(1, cfg.optuna.chunk_size)
    records: list[list] = [[] for _ in group]
    names = ", ".join(c.label for c in group)
    for start in range(0, len(positions), chunk):
        rows = ev.evaluate([c.spec for c in group], positions[start:start + chunk],
                           keep_prompts=False)
        for acc, r in zip(records, rows):
            acc.extend(r)
        say(f"confirm {names}: {len(records[0])}/{len(positions)} queries")
    fp = plan["fingerprint"]
    for c, recs in zip(group, records):
        _write_answers(cfg, fp, c.label, recs, queries)
        if ev.audit:
            say(f"confirm {c.label}: audit judges {', '.join(a.id for a in ev.audit)}")
        for judge, vals in ev.score_audit(recs).items():
            study.set_user_attr(_audit_attr(fp, c.key, judge),
                                {r.query_id: v for r, v in zip(recs, vals)})
        study.set_user_attr(_entry_attr(fp, c.key), {
            "spec": c.spec.to_dict(),
            attrs.PER_QUERY: {r.query_id: (r.judgement.overall if r.judgement else None)
                              for r in recs},
            attrs.LENGTHS: {r.query_id: r.judgement.length_words for r in recs
                            if r.judgement and r.answer is not None},
            attrs.HYGIENE: {r.query_id: r.hygiene.to_dict() if r.hygiene else None
                            for r in recs}})
    return len(group)


def _file_digest(cfg: StudyConfig) -> str:
    data = cfg.path(cfg.search.baseline.urial).read_bytes()
    return hashlib.sha256(data).hexdigest()[:8]


def _urial(cfg: StudyConfig, evaluator, queries, audit):
    """An evaluator and spec for the URIAL prompt file: its preamble and examples, rendered
    with the study's template, budget and decoding like every trial."""
    from icl_search.pool import Pool, read_urial

    path = cfg.path(cfg.search.baseline.urial)
    doc = read_urial(path, evaluator.template)
    shots = doc.answered
    name = f"urial:{path.name}"
    ev = evaluator.with_queries(queries, pool=Pool(shots, path, doc.system),
                                systems={name: doc.system}, audit=audit)
    spec = TrialSpec(name, len(shots), "fixed" if shots else "none",
                     tuple(e.id for e in shots))
    return ev, spec


def report_lines(study: optuna.Study) -> list[str]:
    """The confirmation section of `study report` (nothing when never confirmed)."""
    s = summarize(study)
    return [] if s is None else section_lines(s)
