"""Reference similarity as a judge (`refsim`, `refsim:<embedder>`): the cosine between an
answer's embedding and its query's reference answer's, with the project's embedder (the packaged
MiniLM unless another is named), in the judge's 1-5 units.

AlpacaEval's annotator compared each output with one reference answer; closeness to a strong
reference is a signal of another kind than a learned quality score, and one that an
instruction-independent text cannot earn. A row without a reference has no score: it is
*missing* (`no-reference`), counted in the result's coverage, never given a made-up value.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from icl_search.judge.backends import Verdict
from icl_search.judge.result import JudgeItem
from icl_search.judge.rubric import Rubric

NO_REFERENCE = "no-reference: the row has no `reference` answer to compare with"


def cosine_to_scale(cos: np.ndarray) -> np.ndarray:
    """Cosine in [-1, 1] -> the judge's 1-5 units, linearly (-1 -> 1, 0 -> 3, 1 -> 5)."""
    return 3.0 + 2.0 * np.clip(np.asarray(cos, dtype=np.float64), -1.0, 1.0)


def reference_cosines(embedder, answers: Sequence[str], references: Sequence[str], *,
                      progress: bool = False) -> np.ndarray:
    """Cosine of each answer with its reference (the embedder's vectors are L2-normalised).
    Each distinct text is embedded once."""
    texts = list(dict.fromkeys([*answers, *references]))
    if not texts:
        return np.zeros(0)
    vecs = embedder.encode(texts, show_progress=progress)
    row = {t: i for i, t in enumerate(texts)}
    a = vecs[[row[t] for t in answers]]
    r = vecs[[row[t] for t in references]]
    return np.einsum("ij,ij->i", a, r).astype(np.float64)


class RefSimBackend:
    """Cosine(answer, reference) as every aspect's score of an item's rubric; an item without
    a reference is missing on every aspect. The id names the embedder, so the judge cache never
    mixes two embedders."""

    mode = "json"  # no prompt is rendered; any rubric set serves for its aspect lists
    uses_reference = True

    def __init__(self, model: str = "default", *, threads: int | None = None):
        from icl_search.index.embedder import Embedder

        self.embedder = Embedder(None if model == "default" else model, threads=threads)
        self.id = f"refsim:{self.embedder.id}"

    def judge(self, requests: Sequence[tuple[JudgeItem, Rubric]], *,
              progress: bool = False) -> list[Verdict]:
        have = [(k, it) for k, (it, _) in enumerate(requests) if it.reference is not None]
        cos = reference_cosines(self.embedder, [it.response or "" for _, it in have],
                                [it.reference for _, it in have], progress=progress)
        by_index = {k: float(c) for (k, _), c in zip(have, cos, strict=True)}
        out = []
        for k, (_, rubric) in enumerate(requests):
            if k in by_index:
                value = float(cosine_to_scale(by_index[k]))
                out.append(Verdict(scores=dict.fromkeys(rubric.aspects, value),
                                   detail={"refsim_cosine": round(by_index[k], 6)}))
            else:
                out.append(Verdict(missing=dict.fromkeys(rubric.aspects, NO_REFERENCE)))
        return out
