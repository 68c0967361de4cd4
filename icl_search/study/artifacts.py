"""Per-trial artifacts: every trial's rendered prompts, answers and per-query scores, one JSONL
artifact per trial in Optuna's file-system artifact store (the trial records its id)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import optuna

from icl_search.study.config import StudyConfig
from icl_search.study.evaluate import TrialEvaluation


def artifact_store(path: Path):
    from optuna.artifacts import FileSystemArtifactStore

    path.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(path))


def save_artifacts(store, trial: optuna.Trial, ev: TrialEvaluation) -> None:
    """Rendered prompts, generations and per-query scores, as one JSONL artifact per trial."""
    from optuna.artifacts import upload_artifact

    fd, tmp = tempfile.mkstemp(prefix=f"trial-{trial.number}-", suffix=".jsonl")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for r in ev.records:
                fh.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")
        art = upload_artifact(artifact_store=store, file_path=tmp, study_or_trial=trial,
                              mimetype="application/jsonl")
        trial.set_user_attr("artifact_id", art)
    finally:
        os.unlink(tmp)


def load_trial_records(cfg: StudyConfig, trial: optuna.trial.FrozenTrial) -> list[dict]:
    """The per-query artifact of a finished trial (prompts, answers, scores)."""
    from optuna.artifacts import download_artifact

    art = trial.user_attrs.get("artifact_id")
    if not art:
        return []
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "a.jsonl"
        download_artifact(artifact_store=artifact_store(cfg.artifacts_path),
                          file_path=str(out), artifact_id=art)
        return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
