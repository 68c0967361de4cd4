"""Answer hygiene: what cleaning cut from a generated answer and what is still wrong with it.

A base model that answers in the URIAL layout often runs past its answer: a note after the
answer block's closing fence, an invented `# Question:` exchange, a line or phrase repeated to
the token budget. `Template.cut` removes these and says what it removed (a `Cut`); `Hygiene`
is one answer's counts (scaffolding leaked, fences unbalanced, a repetition loop, stopped by
`max_tokens`) and `HygieneCounts` their sum over a trial or a confirm candidate. An answer that
still `fails` after cleaning is scored at the judge's floor unless `[judge] hygiene_floor` is
off (`icl_search.study.evaluate`)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from typing import Any

#: Role headings a base model invents after its answer; the template's own markers are added.
NEAR_MARKERS = ("Query", "Question", "Answer", "User", "Instruction")
#: A line repeated this often, or a phrase repeated to the end this often, is a loop.
LINE_REPEATS = 3
PHRASE_REPEATS = 3
#: Shortest line (characters) that counts as a repeated line (not "- ", "}" or a blank).
MIN_LINE = 8
#: Fewest words a looping tail must cover (one word repeated: at least this many times).
MIN_LOOP_WORDS = 8
#: Longest phrase (in words) searched for a loop.
MAX_PERIOD = 40

_WORD = re.compile(r"\S+")


def find_loop(text: str) -> int | None:
    """Where a repetition loop's second occurrence starts (cut there to keep the first), or
    None. A loop is a line of `MIN_LINE`+ characters seen `LINE_REPEATS`+ times, or a tail in
    which one phrase (up to `MAX_PERIOD` words) repeats to the end `PHRASE_REPEATS`+ times."""
    cuts = [c for c in (_line_loop(text), _phrase_loop(text)) if c is not None]
    return min(cuts) if cuts else None


def _line_loop(text: str) -> int | None:
    seen: dict[str, list[int]] = {}
    pos = 0
    for line in text.splitlines(keepends=True):
        key = line.strip()
        if len(key) >= MIN_LINE and not key.startswith("```"):
            seen.setdefault(key, []).append(pos)
        pos += len(line)
    starts = [p[1] for p in seen.values() if len(p) >= LINE_REPEATS]
    return min(starts) if starts else None


def _phrase_loop(text: str) -> int | None:
    spans = [(m.start(), m.group()) for m in _WORD.finditer(text)]
    words = [w for _, w in spans]
    n = len(words)
    best: int | None = None
    for p in range(1, min(MAX_PERIOD, n // PHRASE_REPEATS) + 1):
        s = n - p
        while s > 0 and words[s - 1] == words[s - 1 + p]:
            s -= 1
        covered = n - s
        if covered >= max(PHRASE_REPEATS * p, MIN_LOOP_WORDS) and s + p < n:
            cut = spans[s + p][0]
            best = cut if best is None else min(best, cut)
    return best


def _loop_hold(text: str, *, partial: bool) -> int:
    """Where a loop cut could still fall as `text` grows: the second occurrence of any
    repeated line, or the end of the first period of a phrase repeating at the end. `partial`:
    the last word may still grow (it is left out of the comparison)."""
    hold = len(text)
    seen: set[str] = set()
    pos = 0
    for line in text.splitlines(keepends=True):
        key = line.strip()
        if len(key) >= MIN_LINE and not key.startswith("```"):
            if key in seen:
                hold = min(hold, pos)
                break
            seen.add(key)
        pos += len(line)
    spans = [(m.start(), m.group()) for m in _WORD.finditer(text)]
    if partial and spans:
        spans = spans[:-1]
    words = [w for _, w in spans]
    n = len(words)
    for p in range(1, min(MAX_PERIOD, n // 2) + 1):
        s = n - p
        while s > 0 and words[s - 1] == words[s - 1 + p]:
            s -= 1
        if s + p < n:
            hold = min(hold, spans[s + p][0])
    return hold


@dataclass(frozen=True)
class Cut:
    """What `Template.cut` did to one raw completion."""

    text: str  # the cleaned answer
    leaked: bool = False  # text after the answer's end (past its fence, or a role heading)
    loop: bool = False  # a repetition loop was cut back to its first occurrence


@dataclass(frozen=True)
class Hygiene:
    """One answer's hygiene after cleaning."""

    leaked: int = 0  # scaffolding past the answer's end was cut
    unbalanced: int = 0  # the cleaned answer still has an odd number of fences
    loop: int = 0  # a repetition loop was cut
    max_tokens: int = 0  # the generation stopped at the token budget
    residual: int = 0  # a role heading or a loop is still in the cleaned answer

    @property
    def fails(self) -> bool:
        """Still broken after cleaning: scored at the judge's floor by default."""
        return bool(self.unbalanced or self.residual)

    @property
    def defective(self) -> bool:
        """Any defect, cut or not: what a verdict compares between contexts."""
        return bool(self.leaked or self.unbalanced or self.loop or self.residual)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


#: The per-answer counts that a verdict compares (`max_tokens` is reported, not judged: at a
#: small budget every context stops there).
DEFECTS = ("leaked", "unbalanced", "loop", "residual")


@dataclass
class HygieneCounts:
    """Hygiene summed over answers (a trial, a confirm candidate)."""

    answers: int = 0
    leaked: int = 0
    unbalanced: int = 0
    loop: int = 0
    max_tokens: int = 0
    residual: int = 0
    failed: int = 0  # answers that still fail after cleaning (floored by default)
    defective: int = 0  # answers with any defect

    def add(self, h: Hygiene | None) -> None:
        if h is None:
            return
        self.answers += 1
        for f in ("leaked", "unbalanced", "loop", "max_tokens", "residual"):
            setattr(self, f, getattr(self, f) + getattr(h, f))
        self.failed += h.fails
        self.defective += h.defective

    def rate(self, name: str) -> float | None:
        return getattr(self, name) / self.answers if self.answers else None

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> HygieneCounts:
        names = {f.name for f in fields(cls)}
        return cls(**{k: int(v) for k, v in (d or {}).items() if k in names})

    @classmethod
    def of(cls, items) -> HygieneCounts:
        out = cls()
        for h in items:
            out.add(h)
        return out

    def line(self) -> str:
        """'16 answers: 2 leaked, 0 unbalanced, 1 loop, 15 at max_tokens; 0 failed'."""
        return (f"{self.answers} answers: {self.leaked} leaked, {self.unbalanced} unbalanced "
                f"fences, {self.loop} loops, {self.max_tokens} at max_tokens; {self.failed} "
                f"still failing after cleaning")



#: The floor of just-eval's 1-5 scale: what an answer failing hygiene scores, unless its judge
#: names another (`Judge.floor`, e.g. a similarity judge's).
DEFAULT_FLOOR = 1.0


def judge_floor(judge: Any) -> float:
    """The lowest score `judge` gives (its `floor`, or its backend's, else 1.0)."""
    for obj in (judge, getattr(judge, "backend", None)):
        v = getattr(obj, "floor", None)
        if isinstance(v, (int, float)):
            return float(v)
    return DEFAULT_FLOOR
