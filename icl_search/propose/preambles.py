"""Preamble proposals from a study so far, with their provenance.

The proposer's brief combines three sources of signal the field's optimizers use: the best and
worst preambles with their scores (OPRO's scored history), a summary of the pool and the eval
categories (MIPROv2's grounding in the data), and the lowest-scored answers with the aspect
that failed (GEPA's reflection on failures). Each of the `n` requests gets a different focus
(a failing aspect), so a greedy proposer still writes `n` different preambles.

Every accepted proposal is a file `r<round>-p<i>.txt` in the round's folder; the round's
`proposals.json` (written atomically, last) holds each one's provenance: parent preambles,
proposer id, meta-prompt hash, round, and the rejected ones with their reasons.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from icl_search.io import atomic_write, write_json
from icl_search.propose.checks import PreambleCheck
from icl_search.propose.proposer import Proposer, fill

TASK = "preamble.txt"
MANIFEST = "proposals.json"
_FOCI = ("helpfulness", "clarity", "factuality", "depth", "engagement", "safety")


@dataclass
class Scored:
    """One preamble as the study saw it: its best trial's score and how many trials used it."""

    name: str
    text: str
    score: float
    trials: int


@dataclass
class Failure:
    query: str
    answer: str
    aspect: str
    score: float


@dataclass
class Brief:
    scored: list[Scored]
    grounding: str
    failures: list[Failure] = field(default_factory=list)

    def render(self, focus: str, *, best: int = 3, worst: int = 2, text_chars: int = 700) -> str:
        ranked = sorted(self.scored, key=lambda s: -s.score)
        shown = ranked[:best] + [s for s in ranked[best:][-worst:]]
        scored = "\n\n".join(f"Score {s.score:.2f} ({s.trials} trials):\n{s.text[:text_chars]}"
                             for s in shown) or "(none scored yet)"
        fails = "\n\n".join(f"Query: {f.query[:200]}\nAnswer: {f.answer[:300]}\n"
                            f"Weakest aspect: {f.aspect} ({f.score:.1f})"
                            for f in self.failures) or "(no judged answers yet)"
        return fill(TASK, scored=scored, grounding=self.grounding, failures=fails, focus=focus)

    @property
    def parents(self) -> list[str]:
        return [s.name for s in sorted(self.scored, key=lambda s: -s.score)[:3]]


def grounding(pool, queries: Sequence[Any]) -> str:
    """The pool and the eval set in a few lines: sizes and categories, never a query's text."""
    pc = Counter(e.category for e in pool)
    qc = Counter(q.category for q in queries)
    return (f"The assistant answers user queries in these categories (count of evaluation "
            f"queries): {', '.join(f'{c} {n}' for c, n in qc.most_common())}. "
            f"Its prompt shows a few worked examples chosen from a pool of {len(pool)} examples "
            f"({', '.join(f'{c} {n}' for c, n in pc.most_common())}). "
            "Harmful requests must be refused carefully, with a safe alternative.")


def brief_from_studies(rounds: Sequence[tuple[Any, Any]], pool, queries, *,
                       failures: int = 4) -> Brief:
    """`rounds`: (StudyConfig, optuna.Study) of every round so far."""
    from optuna.trial import TrialState

    from icl_search.study import load_trial_records
    from icl_search.study.space import system_choices

    best: dict[str, Scored] = {}
    done = []
    for cfg, study in rounds:
        files = system_choices(cfg)
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if t.values is None or "spec" not in t.user_attrs or "copied_from" in t.user_attrs:
                continue  # a copy (icl_search.propose.history) repeats an earlier round's trial
            name = t.user_attrs["spec"]["system_name"]
            v = float(t.values[0])
            done.append((v, cfg, t))
            if name in best:
                best[name].trials += 1
                best[name].score = max(best[name].score, v)
            elif name in files:
                best[name] = Scored(name, files[name].read_text(encoding="utf-8"), v, 1)
    fails: list[Failure] = []
    for _, cfg, t in sorted(done, key=lambda x: x[0])[:2]:  # the two worst trials' answers
        for r in load_trial_records(cfg, t):
            scores = {a: s for a, s in (r.get("scores") or {}).items() if s is not None}
            if scores and r.get("answer"):
                aspect = min(scores, key=scores.get)
                fails.append(Failure(r["query"], r["answer"], aspect, float(scores[aspect])))
    fails.sort(key=lambda f: f.score)
    return Brief(list(best.values()), grounding(pool, queries), fails[:failures])


@dataclass
class Proposal:
    name: str  # the preamble's name in the search space (its file name)
    path: str
    round: int
    proposer: str
    meta_prompt: str  # sha256 of the task + meta-prompt files
    parents: list[str]
    focus: str
    sha256: str


@dataclass
class RoundProposals:
    round: int
    accepted: list[Proposal]
    rejected: list[dict[str, Any]]  # focus, reason, the text's first characters

    def to_dict(self) -> dict[str, Any]:
        return {"round": self.round, "accepted": [asdict(p) for p in self.accepted],
                "rejected": self.rejected, "counts": {"accepted": len(self.accepted),
                                                      "rejected": len(self.rejected)}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RoundProposals:
        return cls(d["round"], [Proposal(**p) for p in d["accepted"]], d["rejected"])


def propose_preambles(brief: Brief, proposer: Proposer, check: PreambleCheck, *, n: int,
                      round_: int, out_dir: Path, max_tokens: int = 400,
                      progress: bool = False) -> RoundProposals:
    """Ask for `n` preambles, check each, write the accepted ones and the manifest."""
    out_dir.mkdir(parents=True, exist_ok=True)
    foci = [_FOCI[i % len(_FOCI)] for i in range(n)]
    tasks = [brief.render(f"Proposal {i + 1} of {n}: above all, improve {f}.")
             for i, f in enumerate(foci)]
    texts = proposer.write(tasks, max_tokens=max_tokens, progress=progress)
    accepted, rejected = [], []
    seen = {hashlib.sha256(s.text.strip().encode()).hexdigest() for s in brief.scored}
    for i, (focus, text) in enumerate(zip(foci, texts)):
        why = check.reason(text)
        digest = hashlib.sha256((text or "").strip().encode()).hexdigest()
        if why is None and digest in seen:
            why = "a copy of a preamble already in the space"
        if why is not None:
            rejected.append({"focus": focus, "reason": why, "text": (text or "")[:200]})
            continue
        seen.add(digest)
        name = f"r{round_}-p{i}.txt"
        with atomic_write(out_dir / name) as fh:
            fh.write(text.strip() + "\n")
        accepted.append(Proposal(name, str(out_dir / name), round_, proposer.id,
                                 proposer.meta_hash(TASK), brief.parents, focus, digest[:16]))
    result = RoundProposals(round_, accepted, rejected)
    write_json(out_dir / MANIFEST, result.to_dict())
    return result
