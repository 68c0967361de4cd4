"""From a finished trial to a prompt bundle: what the study stores so any trial can be
exported later (even from another machine with only the storage URL), and the export itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from icl_search.errors import IclSearchError
from icl_search.study.config import StudyConfig
from icl_search.study.space import TrialSpec, system_choices

EXPORT_ATTR = "export"


class ExportError(IclSearchError, ValueError):
    """The study or trial cannot be exported (none finished, unknown trial, ...)."""


def record_export_info(study: optuna.Study, cfg: StudyConfig) -> None:
    """Everything `export` needs beside the trial itself, stored on the study once."""
    from icl_search.engines import parse_spec

    kind, target, _ = parse_spec(cfg.model.engine)
    info = {
        "model": target if kind == "vllm" else cfg.model.engine,
        "engine": cfg.model.engine,
        "template": cfg.template or {},
        "systems": {n: p.read_text(encoding="utf-8") for n, p in system_choices(cfg).items()},
        "pool_path": str(cfg.path(cfg.pool.path).resolve()),
        "index_dir": str(cfg.path(cfg.pool.index_dir).resolve()) if cfg.pool.index_dir else None,
        "embedder": cfg.pool.embedder,
        "sampling": cfg.decoding.model_dump(),
        "judge": cfg.judge.spec,
        "config_hash": cfg.hash,
        "config_path": str(cfg.source) if cfg.source else None,
    }
    if study.user_attrs.get(EXPORT_ATTR) != info:
        study.set_user_attr(EXPORT_ATTR, info)


def pick_trial(study: optuna.Study, number: int | None) -> optuna.trial.FrozenTrial:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise ExportError(f"study {study.study_name!r} has no finished trial to export")
    if number is not None:
        for t in study.get_trials(deepcopy=False):
            if t.number == number:
                if t.state != TrialState.COMPLETE:
                    raise ExportError(f"--trial {number}: trial is {t.state.name}, not COMPLETE")
                return t
        raise ExportError(f"--trial {number}: no such trial in study {study.study_name!r} "
                          f"(trials 0..{len(study.trials) - 1})")
    if len(study.directions) > 1:
        # Pareto front: the highest-scoring point unless the user picks another with --trial
        return max(study.best_trials, key=lambda t: t.values[0])
    return study.best_trial


def pick_confirmed(study: optuna.Study):
    """(trial, confirmation summary) of the confirmed best (`icl_search.study.confirm`), or
    (None, None) when the study was never confirmed."""
    from icl_search.study.confirm import summarize

    summary = summarize(study)
    best = summary.best if summary is not None else None
    if best is None or best.trial is None:
        return None, summary
    trial = study.trials[best.trial]
    if trial.state != TrialState.COMPLETE:
        return None, summary
    return trial, summary


def confirm_scores(summary, trial_number: int, selected_by: str) -> dict[str, Any] | None:
    """The bundle's `scores.confirm` for a trial that was confirmed (else None)."""
    row = next((r for r in summary.rows if r.trial == trial_number), None) if summary else None
    if row is None:
        return None
    return {"search_score": row.search, "score": row.confirm,
            "interval": None if row.low is None else [row.low, row.high], "n": row.n,
            "shrinkage": row.shrinkage, "judge": summary.judge, "selected_by": selected_by,
            "beat_baseline": summary.beat_baseline, "verdict": summary.sentence(),
            "gains": [g.to_dict() for g in row.gains]}


def export_bundle(study: optuna.Study, out: str | Path, *, trial_number: int | None = None,
                  storage_url: str | None = None, urial_out: str | Path | None = None,
                  search_best: bool = False):
    """Write the chosen trial as a bundle JSON; optionally also as a URIAL prompt file (fixed
    sets only: for a retrieval bundle `urial_out` is not written). Returns the `Bundle`.

    The default trial is the confirmed best when the study was confirmed (the baseline when no
    trial beat it on the confirm set), else, or with `search_best`, the best search score.
    """
    from icl_search.bundle import Bundle
    from icl_search.engines import SamplingParams
    from icl_search.pool import Pool
    from icl_search.prompt import Template
    from icl_search.selection import DEFAULT_MMR_LAMBDA, SelectionConfig

    info: dict[str, Any] | None = study.user_attrs.get(EXPORT_ATTR)
    if not info:
        raise ExportError(f"study {study.study_name!r} was not created by `icl-search study run`"
                          " (no export information stored)")
    confirmed, summary = (None, None) if search_best or trial_number is not None else \
        pick_confirmed(study)
    if summary is None:
        from icl_search.study.confirm import summarize

        summary = summarize(study)
    trial = confirmed or pick_trial(study, trial_number)
    selected_by = "confirm" if confirmed is not None else \
        "trial" if trial_number is not None else "search"
    spec = TrialSpec.from_dict(trial.user_attrs["spec"])
    template = Template.from_dict(info["template"])
    s = dict(info["sampling"])
    if spec.temperature is not None:
        s["temperature"] = spec.temperature
    if spec.repetition_penalty is not None:
        s["repetition_penalty"] = spec.repetition_penalty
    sampling = SamplingParams(stop=template.stop, **s)
    cov = trial.user_attrs.get("coverage") or {}
    fractions = [j / t for j, t in cov.values() if t]
    scores = {
        "overall": trial.values[0],
        "aspects": {a: v for a, v in (trial.user_attrs.get("aspects") or {}).items()
                    if v is not None},
        "n_queries": trial.user_attrs.get("n_queries"), "judge": info["judge"],
        # the lowest per-aspect share of items the judge actually scored
        "coverage": min(fractions) if fractions else None,
        "context_tokens": trial.user_attrs.get("context_tokens"),
    }
    conf = confirm_scores(summary, trial.number, selected_by)
    if conf is not None:
        scores["confirm"] = conf
    provenance = {"study": study.study_name, "trial": trial.number,
                  "storage": storage_url, "config_hash": info["config_hash"]}
    common = {"model": info["model"], "system": info["systems"][spec.system_name],
              "template": template, "sampling": sampling, "scores": scores,
              "provenance": provenance, "bundle_path": out}
    if spec.k == 0 or spec.strategy == "none":
        bundle = Bundle.create(examples=[], **common)
    elif spec.strategy == "fixed":
        pool = Pool.load(info["pool_path"])
        bundle = Bundle.create(examples=[pool[i] for i in spec.fixed_ids], **common)
    else:
        sel = SelectionConfig(strategy=spec.strategy, k=spec.k, fixed_ids=list(spec.fixed_ids),
                              mmr_lambda=DEFAULT_MMR_LAMBDA if spec.mmr_lambda is None
                              else spec.mmr_lambda)
        bundle = Bundle.create(selection=sel, pool_path=info["pool_path"],
                               index_dir=info["index_dir"],
                               embedder=None if info["embedder"] == "default" else info["embedder"],
                               **common)
    # a retrieval bundle chooses its examples per query: it has no single URIAL prompt file
    # (the caller says so), but the bundle itself is always written
    text = bundle.to_urial() if urial_out is not None and bundle.mode == "fixed" else None
    bundle.save(out)
    if text is not None:
        from icl_search.io import atomic_write

        with atomic_write(urial_out) as fh:
            fh.write(text)
    return bundle
