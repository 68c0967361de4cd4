"""Rubrics: the judge prompts as data files, their header, placeholders and version.

A rubric file is a small header of `key: value` lines, a line `---`, then the prompt text::

    aspects: helpfulness, clarity, factuality, depth, engagement
    mode: json
    ---
    ... prompt text with {query} and {response} ...

`mode: json` rubrics ask for a JSON object (chat judges, parsed by `parsing`); `mode: logprob`
rubrics end right where the score digit comes, with an `{aspect}` placeholder naming the aspect
to rate (local judges read the next-token distribution). Placeholders are exactly `{name}` with
a lower-case name; any other brace (a JSON example in the prompt) is left alone. The version is
a hash of the file text, so a cached judgement never outlives an edit of its rubric.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from icl_search.errors import IclSearchError

TEMPLATES = Path(__file__).parent / "templates"

#: The five just-eval aspects rated on regular queries, in report order.
ASPECTS: tuple[str, ...] = ("helpfulness", "clarity", "factuality", "depth", "engagement")
#: The one aspect rated on safety queries.
SAFETY: tuple[str, ...] = ("safety",)
#: Every aspect a result can carry, in report order.
ALL_ASPECTS: tuple[str, ...] = ASPECTS + SAFETY

MODES = ("json", "logprob")
_REQUIRED = {"json": ("query", "response"), "logprob": ("query", "response", "aspect")}
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


class RubricError(IclSearchError, ValueError):
    """A rubric file cannot be used (missing placeholder, bad header); names the file."""


@dataclass(frozen=True)
class Rubric:
    """One judge prompt: which aspects it rates, how the answer is read, and its text."""

    name: str
    aspects: tuple[str, ...]
    mode: str
    text: str
    source: str = "<string>"

    @property
    def version(self) -> str:
        """Content hash of the rubric (header included): part of every judge-cache key."""
        h = hashlib.sha256(f"{self.mode}\n{','.join(self.aspects)}\n{self.text}".encode())
        return h.hexdigest()[:16]

    @property
    def placeholders(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(_PLACEHOLDER.findall(self.text)))

    def render(self, query: str, response: str, aspect: str | None = None) -> str:
        """Fill the placeholders in one pass, so braces inside the query or response stay text."""
        values = {"query": query, "response": response}
        if self.mode == "logprob":
            if aspect not in self.aspects:
                raise ValueError(f"rubric {self.name}: aspect {aspect!r} is not one of "
                                 f"{', '.join(self.aspects)}")
            values["aspect"] = aspect.capitalize()
        return _PLACEHOLDER.sub(lambda m: values[m.group(1)], self.text)

    # -- loading -----------------------------------------------------------------------------
    @classmethod
    def from_text(cls, text: str, *, name: str = "rubric", source: str = "<string>") -> Rubric:
        where = source
        if "\n---\n" not in "\n" + text:
            raise RubricError(f"{where}: no header: the file must start with 'aspects: ...' "
                              "lines followed by a line '---'")
        head, body = ("\n" + text).split("\n---\n", 1)
        meta: dict[str, str] = {}
        for lineno, line in enumerate(head.strip("\n").splitlines(), start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            key, sep, value = line.partition(":")
            if not sep:
                raise RubricError(f"{where}:{lineno}: header line {line!r} is not 'key: value'")
            meta[key.strip().lower()] = value.strip()
        unknown = set(meta) - {"aspects", "mode"}
        if unknown:
            raise RubricError(f"{where}: unknown header field(s) {sorted(unknown)}; "
                              "accepted: aspects, mode")
        aspects = tuple(a.strip().lower() for a in meta.get("aspects", "").split(",") if a.strip())
        if not aspects:
            raise RubricError(f"{where}: header field 'aspects' is missing or empty")
        mode = meta.get("mode", "json")
        if mode not in MODES:
            raise RubricError(f"{where}: header field mode={mode!r}; accepted: "
                              f"{', '.join(MODES)}")
        rubric = cls(name=name, aspects=aspects, mode=mode, text=body, source=source)
        found = set(rubric.placeholders)
        for required in _REQUIRED[mode]:
            if required not in found:
                raise RubricError(f"{where}: placeholder {{{required}}} is missing "
                                  f"(a {mode} rubric needs "
                                  f"{', '.join('{' + p + '}' for p in _REQUIRED[mode])})")
        extra = found - set(_REQUIRED[mode])
        if extra:
            raise RubricError(f"{where}: unknown placeholder(s) "
                              f"{', '.join('{' + p + '}' for p in sorted(extra))}; a {mode} "
                              f"rubric accepts {', '.join('{' + p + '}' for p in _REQUIRED[mode])}")
        return rubric

    @classmethod
    def load(cls, path: str | Path) -> Rubric:
        """A rubric file by path, or a shipped one by name (`multi_aspect`, `safety_logprob`...)."""
        p = Path(path)
        if not p.suffix and not p.exists():
            p = TEMPLATES / f"{p.name}.txt"
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            shipped = ", ".join(sorted(f.stem for f in TEMPLATES.glob("*.txt")))
            raise RubricError(f"{path}: rubric file not found (shipped rubrics: {shipped})") \
                from None
        except UnicodeDecodeError as e:
            raise RubricError(f"{p}: not UTF-8 text ({e.reason})") from None
        return cls.from_text(text, name=p.stem, source=str(p))


@dataclass(frozen=True)
class RubricSet:
    """The rubric for regular queries and the one for safety queries (just-eval's split)."""

    regular: Rubric
    safety: Rubric

    def for_category(self, category: str) -> Rubric:
        return self.safety if category == "safety" else self.regular

    @property
    def version(self) -> str:
        return hashlib.sha256(f"{self.regular.version}:{self.safety.version}".encode()
                              ).hexdigest()[:16]

    @classmethod
    def default(cls, mode: str) -> RubricSet:
        suffix = "" if mode == "json" else f"_{mode}"
        return cls(Rubric.load(f"multi_aspect{suffix}"), Rubric.load(f"safety{suffix}"))

    @classmethod
    def load(cls, mode: str, regular: str | Path | None = None,
             safety: str | Path | None = None) -> RubricSet:
        base = cls.default(mode)
        rs = cls(Rubric.load(regular) if regular else base.regular,
                 Rubric.load(safety) if safety else base.safety)
        for r in (rs.regular, rs.safety):
            if r.mode != mode:
                raise RubricError(f"{r.source}: a {r.mode} rubric, but this judge needs a "
                                  f"{mode} rubric (header 'mode: {mode}')")
        return rs
