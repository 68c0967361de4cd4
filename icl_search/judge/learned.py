"""Learned judges as backends: a distilled cross-encoder (`distilled:DIR`, trained by
`icl-search judge distill`), the reference-anchored judge (`anchored:DIR`, and the embedded
`default`; `icl_search.judge.anchored`) and the reward judge (`reward:DIR`, the old default,
prepared by `icl-search judge prepare --kind reward`). All score every item of a call in batches
on CPU.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from icl_search.judge.backends import JudgeError, Verdict
from icl_search.judge.distill import FORMAT, MANIFEST, _predict
from icl_search.judge.records import OVERALL
from icl_search.judge.result import JudgeItem
from icl_search.judge.rubric import Rubric


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


class RewardBackend:
    """The reward judge (`icl_search.judge.reward`): the quality head's score, in 1-5 units,
    for every aspect of a regular item's rubric, the safety head's for a safety item's. One
    score per item: the judge orders answers; it does not grade aspects apart. The id names
    the folder and the manifest's hash (which carries the training data's sha256s), so the
    judge cache never mixes two trainings."""

    mode = "json"  # no prompt is rendered; any rubric set serves for its aspect lists

    def __init__(self, path: str | os.PathLike, *, batch_size: int = 32,
                 threads: int | None = None):
        from icl_search.judge.prepare import load_reward_manifest
        from icl_search.judge.reward import load_model

        self.path = Path(path).expanduser()
        try:
            self.manifest, digest = load_reward_manifest(self.path)
        except ValueError as e:  # DataError is one
            raise JudgeError(str(e)) from None
        self.recipe = self.manifest["recipe"]
        self.batch_size = batch_size
        self.id = f"reward:{self.path.resolve().name}@{digest[:12]}"
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        try:
            self.model, self.tokenizer = load_model(str(self.path))
        except (OSError, ValueError) as e:
            raise JudgeError(f"reward judge {self.path}: cannot load the model "
                             f"({' '.join(str(e).split())[:300]})") from None

    def rewards(self, pairs: Sequence[tuple[str, str]], *, progress: bool = False
                ) -> np.ndarray:
        """Raw rewards (n, 2): quality, safety."""
        from icl_search.judge.reward import predict

        return predict(self.model, self.tokenizer, self.recipe, pairs,
                       batch_size=self.batch_size, progress=progress)

    def judge(self, requests: Sequence[tuple[JudgeItem, Rubric]], *,
              progress: bool = False) -> list[Verdict]:
        from icl_search.judge.reward import to_scale

        raw = self.rewards([(it.query, it.response or "") for it, _ in requests],
                           progress=progress)
        out = []
        for (it, rubric), row in zip(requests, to_scale(raw), strict=True):
            value = float(row[1] if it.category == "safety" else row[0])
            out.append(Verdict(scores=dict.fromkeys(rubric.aspects, value),
                               detail={"reward": self.id}))
        return out


class AnchoredBackend:
    """The anchored judge as a backend: every aspect of a regular item's rubric gets the
    combined score (its reference-free part when the item has no reference); a safety item
    gets the reward's safety head. The id names the folder and the manifest's hash (recipe and
    data sha256s), so the judge cache never mixes two preparations."""

    mode = "json"  # no prompt is rendered; any rubric set serves for its aspect lists
    uses_reference = True

    def __init__(self, path, *, batch_size: int = 32, threads: int | None = None):
        from icl_search.index.embedder import Embedder
        from icl_search.judge.anchored import AnchoredRecipe, Weights
        from icl_search.judge.prepare import ANCHORED_MANIFEST, is_complete
        from icl_search.judge.reward import load_model

        self.path = Path(path).expanduser()
        if not is_complete(self.path, ANCHORED_MANIFEST):
            raise JudgeError(f"{self.path}: not a complete anchored judge (no .complete marker, "
                             "or files that do not match it); prepare it with "
                             "`icl-search judge prepare`")
        blob = (self.path / ANCHORED_MANIFEST).read_bytes()
        self.manifest = json.loads(blob)
        self.id = f"anchored:{self.path.resolve().name}@{hashlib.sha256(blob).hexdigest()[:12]}"
        self.recipe = AnchoredRecipe.from_dict(self.manifest["recipe"])
        self.reward_recipe = self.manifest["reward_recipe"]
        self.weights = {k: Weights(**v) for k, v in self.manifest["weights"].items()}
        self.batch_size = batch_size
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        try:
            self.models = [load_model(str(self.path / f"seed-{s}")) for s in self.recipe.seeds]
        except (OSError, ValueError) as e:
            raise JudgeError(f"anchored judge {self.path}: cannot load a reward head "
                             f"({' '.join(str(e).split())[:300]})") from None
        self.embedder = Embedder(threads=threads)

    def rewards(self, pairs: Sequence[tuple[str, str]], *, progress: bool = False) -> np.ndarray:
        """Raw rewards (n, 2), quality and safety, averaged over the seeds' heads."""
        from icl_search.judge.reward import predict

        return np.mean([predict(m, t, self.reward_recipe, pairs, batch_size=self.batch_size,
                                progress=progress) for m, t in self.models], axis=0)

    def scores(self, items: Sequence[JudgeItem], *, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(1-5 scores, has-reference flags) of JudgeItems."""
        from icl_search.judge.anchored import raw_features, to_scale
        from icl_search.judge.reward import to_scale as reward_scale

        raw = self.rewards([(it.query, it.response or "") for it in items], progress=progress)
        out = np.asarray(reward_scale(raw[:, 1]), dtype=np.float64).copy()
        anchored = np.array([it.reference is not None and it.category != "safety"
                             for it in items])
        regular = [k for k, it in enumerate(items) if it.category != "safety"]
        if regular:
            x = raw_features(self.recipe.features, rewards=raw[regular, 0],
                             embedder=self.embedder,
                             queries=[items[k].query for k in regular],
                             answers=[items[k].response or "" for k in regular],
                             references=[items[k].reference for k in regular])
            cols = [self.recipe.features.index(f) for f in self.weights["reference_free"].features]
            for row, k in enumerate(regular):
                w = self.weights["anchored" if anchored[k] else "reference_free"]
                v = x[row] if anchored[k] else x[row, cols]
                out[k] = float(to_scale(w.score(v[None, :]))[0])
        return out, anchored

    def judge(self, requests: Sequence[tuple[JudgeItem, Rubric]], *,
              progress: bool = False) -> list[Verdict]:
        values, anchored = self.scores([it for it, _ in requests], progress=progress)
        return [Verdict(scores=dict.fromkeys(rubric.aspects, float(v)),
                        detail={"anchored": self.id, **({"head": "safety"}
                                if it.category == "safety" else {"reference": bool(a)})})
                for (it, rubric), v, a in zip(requests, values, anchored, strict=True)]
