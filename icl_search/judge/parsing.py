"""Reading scores out of what a real judge writes.

Judges wrap their JSON in fences or prose, nest it (`{"clarity": {"score": "4"}}`) or flatten it
(`{"clarity": 4, "clarity_rationale": ...}`), write scores as "4", "4/5", "4 out of 5" or
"N/A", drop aspects, or skip JSON altogether and write "Clarity: 4". `parse_judgement` accepts
all of these and reports, per aspect, either a score in [1, 5] or why there is none. Answers
over `MAX_REPLY_CHARS` are refused unread; broken JSON goes through `json_repair`, whose
result counts only when every key in it was quoted in the answer (so what a broken answer
means does not hang on the library's version), and what follows an unreadable object's brace is
not read as labelled lines.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

SCORE_MIN, SCORE_MAX = 1.0, 5.0
#: Replies longer than this are not parsed (a miss, `too-long`): a judge's JSON for the
#: just-eval aspects takes 1-3k characters, and repairing garbage costs time that grows
#: faster than its length (json_repair: 0.25 s on 4k characters of nested garbage, 3.4 s on 16k).
MAX_REPLY_CHARS = 20_000
#: At most this much text (from the first brace) goes through `json_repair`.
MAX_REPAIR_CHARS = 4_000

#: Why an aspect has no score. `na` is the judge's own verdict; the others are judge failures
#: worth a repair request.
NA, MISSING, INVALID, UNPARSABLE, TOO_LONG = "n/a", "missing", "invalid", "unparsable", "too-long"

_NA_WORDS = {"n/a", "na", "none", "null", "not applicable", "n.a.", "-", "not_applicable"}
_SCORE_KEYS = ("score", "rating", "value", "grade")
_REASON_KEYS = ("rationale", "reason", "explanation", "justification", "comment")
_FENCE = re.compile(r"```[a-zA-Z]*\s*\n?(.*?)```", re.DOTALL)
_NUMBER = r"[-+]?\d+(?:\.\d+)?"
_SCORE_TEXT = re.compile(
    rf"^\s*(?:score\s*[:=]?\s*)?({_NUMBER})\s*(?:(?:/|out of|of)\s*({_NUMBER}))?\s*\.?\s*$",
    re.IGNORECASE,
)


@dataclass
class Parsed:
    """Scores read from one judge answer, and for each unscored aspect the reason."""

    scores: dict[str, float] = field(default_factory=dict)
    rationales: dict[str, str] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)  # aspect -> "missing: ..." etc.

    @property
    def needs_repair(self) -> bool:
        """True when some aspect failed for a reason other than the judge's own N/A."""
        return any(not p.startswith(NA) for p in self.problems.values())

    def merge(self, other: Parsed) -> Parsed:
        """Keep what was read before; take from a repaired answer only what is still missing."""
        out = Parsed(dict(self.scores), dict(self.rationales), {})
        for aspect, problem in self.problems.items():
            if problem.startswith(NA):
                out.problems[aspect] = problem
            elif aspect in other.scores:
                out.scores[aspect] = other.scores[aspect]
                if aspect in other.rationales:
                    out.rationales[aspect] = other.rationales[aspect]
            else:
                out.problems[aspect] = other.problems.get(aspect, problem)
        return out


def coerce_score(value: Any) -> tuple[float | None, str | None]:
    """A score value from a judge -> (score, None) or (None, problem)."""
    if isinstance(value, dict):
        for k in _SCORE_KEYS:
            for key in value:
                if str(key).lower() == k:
                    return coerce_score(value[key])
        return None, f"{MISSING}: no score field in {json.dumps(value)[:80]}"
    if value is None:
        return None, f"{NA}: null"
    if isinstance(value, bool):
        return None, f"{INVALID}: {value!r} is not a score"
    if isinstance(value, (int, float)):
        x = float(value)
    elif isinstance(value, str):
        s = value.strip().strip("*").strip()
        if s.lower() in _NA_WORDS:
            return None, f"{NA}: {value.strip()!r}"
        m = _SCORE_TEXT.match(s)
        if not m:
            return None, f"{INVALID}: {value.strip()[:40]!r} is not a score"
        x = float(m.group(1))
        if m.group(2) is not None and float(m.group(2)) != SCORE_MAX:
            return None, f"{INVALID}: {s!r} is not on the 1-5 scale"
    else:
        return None, f"{INVALID}: {type(value).__name__} is not a score"
    if not math.isfinite(x) or not SCORE_MIN <= x <= SCORE_MAX:
        return None, f"{INVALID}: {x:g} is outside 1-5"
    return x, None


def _rationale(value: Any) -> str | None:
    if isinstance(value, dict):
        for k in _REASON_KEYS:
            for key in value:
                if str(key).lower() == k and isinstance(value[key], str):
                    return value[key].strip()
    return None


def _objects(text: str) -> list[dict]:
    """Every JSON object in the text: fenced blocks first, then inline; strict JSON first,
    then one `json_repair` pass (single quotes, trailing commas, Python literals, a missing
    closing brace) over at most `MAX_REPAIR_CHARS` from the first brace."""
    found: list[dict] = []
    chunks = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    decoder = json.JSONDecoder()
    for chunk in chunks:
        i = chunk.find("{")
        while i != -1:
            try:
                obj, end = decoder.raw_decode(chunk, i)
            except (ValueError, RecursionError):
                obj, end = None, i + 1
            if isinstance(obj, dict):
                found.append(obj)
                i = chunk.find("{", end)
            else:
                i = chunk.find("{", i + 1)
        if found:
            return found
    for chunk in chunks:
        start = chunk.find("{")
        if start == -1:
            continue
        found = _repaired(chunk[start:start + MAX_REPAIR_CHARS])
        if found:
            return found
    return found


def _repaired(chunk: str) -> list[dict]:
    """`json_repair`'s objects, kept only when every key in them was written quoted in the
    chunk: a repair may fix quotes, commas and closing brackets, but a key it had to guess
    (`{clarity: 4,, ...`) makes the answer unreadable, whatever the library's version makes
    of it."""
    import json_repair

    try:
        value = json_repair.loads(chunk)
    except (ValueError, TypeError, RecursionError, MemoryError):  # e.g. nesting too deep
        return []
    values = value if isinstance(value, list) else [value]
    return [v for v in values if isinstance(v, dict) and v and _keys_quoted(v, chunk)]


def _keys_quoted(value: Any, chunk: str, depth: int = 0) -> bool:
    if depth > 8:  # deeper than any rubric: garbage
        return False
    if isinstance(value, dict):
        return all(f'"{k}"' in chunk or f"'{k}'" in chunk for k in value) and all(
            _keys_quoted(v, chunk, depth + 1) for v in value.values())
    if isinstance(value, list):
        return all(_keys_quoted(v, chunk, depth + 1) for v in value)
    return True


def _norm(key: Any) -> str:
    return re.sub(r"[^a-z]", "", str(key).lower())


def _lookup(obj: dict, aspects: tuple[str, ...], nested: bool = False, depth: int = 0
            ) -> dict[str, tuple[Any, str | None]]:
    """aspect -> (raw score value, rationale) from one object, whatever its shape."""
    out: dict[str, tuple[Any, str | None]] = {}
    by_norm = {_norm(k): k for k in obj}
    for aspect in aspects:
        a = _norm(aspect)
        for cand in (a, a + "score", a + "rating", "score" + a):
            if cand in by_norm:
                value = obj[by_norm[cand]]
                reason = _rationale(value)
                if reason is None:
                    for rk in _REASON_KEYS:
                        if a + rk in by_norm and isinstance(obj[by_norm[a + rk]], str):
                            reason = obj[by_norm[a + rk]].strip()
                out[aspect] = (value, reason)
                break
    # One-aspect rubrics often get {"rationale": ..., "score": 4} (at the top level only: a
    # nested {"score": 4} belongs to whatever key holds it).
    if len(aspects) == 1 and aspects[0] not in out and not nested:
        for k in _SCORE_KEYS:
            if k in by_norm:
                out[aspects[0]] = (obj[by_norm[k]], _rationale(obj))
                break
    # Wrapped: {"scores": {...}} / {"ratings": {...}} / {"evaluation": {...}}.
    # (A few levels only: deeper nesting is garbage, and must not cost a deep recursion.)
    if len(out) < len(aspects) and depth < 3:
        for value in obj.values():
            if isinstance(value, dict):
                for aspect, hit in _lookup(value, aspects, nested=True,
                                           depth=depth + 1).items():
                    out.setdefault(aspect, hit)
    return out


def _from_lines(text: str, aspects: tuple[str, ...]) -> dict[str, tuple[Any, str | None]]:
    """No JSON: 'Clarity: 4', '**Depth** - 3/5', 'Helpfulness score = 5'."""
    out: dict[str, tuple[Any, str | None]] = {}
    for aspect in aspects:
        m = re.search(
            rf"{aspect}\W{{0,4}}(?:score|rating)?\W{{0,4}}?[:=\-–]\s*\**\s*"
            rf"({_NUMBER}\s*(?:/\s*{_NUMBER}|out of\s*{_NUMBER})?|N/?A\b)",
            text, re.IGNORECASE)
        if m:
            out[aspect] = (m.group(1), None)
    return out


def parse_judgement(text: str | None, aspects: tuple[str, ...]) -> Parsed:
    """Read one score per aspect from a judge's answer; never invents one."""
    parsed = Parsed()
    if text is None or not text.strip():
        parsed.problems = {a: f"{UNPARSABLE}: empty answer" for a in aspects}
        return parsed
    if len(text) > MAX_REPLY_CHARS:
        parsed.problems = {a: f"{TOO_LONG}: the answer has {len(text):,} characters; at most "
                              f"{MAX_REPLY_CHARS:,} are read" for a in aspects}
        return parsed
    hits: dict[str, tuple[Any, str | None]] = {}
    for obj in _objects(text):
        for aspect, hit in _lookup(obj, aspects).items():
            hits.setdefault(aspect, hit)
    if not hits:  # labelled lines, before any object that could not be read
        hits = _from_lines(text.split("{", 1)[0], aspects)
    if not hits:
        snippet = " ".join(text.split())[:60]
        parsed.problems = {a: f"{UNPARSABLE}: no scores in {snippet!r}" for a in aspects}
        return parsed
    for aspect in aspects:
        if aspect not in hits:
            parsed.problems[aspect] = f"{MISSING}: the answer has no {aspect} score"
            continue
        value, reason = hits[aspect]
        score, problem = coerce_score(value)
        if score is None:
            parsed.problems[aspect] = problem or INVALID
        else:
            parsed.scores[aspect] = score
        if reason:
            parsed.rationales[aspect] = reason
    return parsed


def repair_request(parsed: Parsed, aspects: tuple[str, ...]) -> str:
    """The follow-up message that asks a judge to fix an unreadable answer."""
    bad = [a for a, p in parsed.problems.items() if not p.startswith(NA)]
    issues = "; ".join(f"{a}: {parsed.problems[a]}" for a in bad)
    shape = ", ".join(f'"{a}": {{"rationale": "...", "score": <1-5>}}' for a in aspects)
    return (f"Your answer could not be read ({issues}). Reply again with only one JSON object "
            f"of this shape, every score a whole number from 1 to 5 (or \"N/A\" where the "
            f"aspect cannot apply): {{{shape}}}")
