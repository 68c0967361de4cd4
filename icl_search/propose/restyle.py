"""Example restyling: the proposer rewrites pool answers into the URIAL style (a short
acknowledgement, a structured body, a brief summary, an engaging tone; a careful refusal with
a safe alternative for harmful queries) while keeping their content.

The result is a new pool version: every original example, plus each accepted restyle under the
same id with the suffix `.restyled`, `source = "restyled"`, tag `restyled` and the original id
(with proposer, meta-prompt hash, round and the check's key-token recall) in `meta`; so
`pool.sources = ["restyled"]` searches restyles alone, and the default mixes both. Rejected
restyles (content dropped, language changed, template markers leaked, an eval query copied)
are listed with their reasons in `<pool>.report.json`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from icl_search.io import write_json
from icl_search.propose.checks import RestyleCheck, key_token_recall
from icl_search.propose.proposer import Proposer, fill

TASK = "restyle.txt"
SOURCE = "restyled"
SUFFIX = ".restyled"


@dataclass
class RestyleResult:
    pool: Any  # icl_search.pool.Pool: originals + accepted restyles
    path: Path
    accepted: list[str]
    rejected: list[dict[str, str]]

    def to_dict(self) -> dict[str, Any]:
        return {"pool": str(self.path), "accepted": self.accepted, "rejected": self.rejected,
                "counts": {"accepted": len(self.accepted), "rejected": len(self.rejected)}}


def restyle_pool(pool, proposer: Proposer, check: RestyleCheck, *, out_path: Path,
                 round_: int = 1, max_tokens: int = 700, progress: bool = False,
                 ids: list[str] | None = None) -> RestyleResult:
    """Restyle the pool's original examples (or those in `ids`) and save the new version."""
    from icl_search.pool import Pool

    originals = [e for e in pool if e.source != SOURCE and (ids is None or e.id in ids)]
    tasks = [fill(TASK, category=e.category, query=e.query, answer=e.answer) for e in originals]
    texts = proposer.write(tasks, max_tokens=max_tokens, progress=progress)
    new, accepted, rejected = [], [], []
    meta_hash = proposer.meta_hash(TASK)
    reasons = check.reasons([(e.query, e.answer, t) for e, t in zip(originals, texts)])
    for e, text, why in zip(originals, texts, reasons):
        if why is not None:
            rejected.append({"id": e.id, "reason": why, "text": (text or "")[:200]})
            continue
        vid = e.id + SUFFIX
        new.append(replace(e, id=vid, answer=text.strip(), source=SOURCE,
                           tags=tuple(dict.fromkeys((*e.tags, SOURCE))),
                           meta={**e.meta, "original_id": e.id, "proposer": proposer.id,
                                 "meta_prompt": meta_hash, "round": round_,
                                 "key_token_recall": round(key_token_recall(e.answer, text), 3)}))
        accepted.append(vid)
    kept = [e for e in pool if e.id not in {x.id for x in new}]
    out = Pool(kept + new, out_path, pool.system)
    out.save(out_path)
    result = RestyleResult(Pool.load(out_path), out_path, accepted, rejected)
    write_json(report_path(out_path), result.to_dict())
    return result


def report_path(pool_path: Path) -> Path:
    return pool_path.with_name(pool_path.name + ".report.json")
