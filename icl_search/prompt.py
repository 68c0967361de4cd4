"""The URIAL prompt: template fields, rendering, token budgeting and output cleaning.

Everything that decides the exact bytes a base model sees lives here, so a study, a
bundle and the server render the same prompt for the same inputs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property, lru_cache
from typing import Any, Protocol

from icl_search.hygiene import MIN_LINE, NEAR_MARKERS, Cut, Hygiene, _loop_hold, find_loop


class Shot(Protocol):
    """Anything with a query and an answer (a pool `Example`, or a `(query, answer)` pair)."""

    query: str
    answer: str


def _qa(shot: Any) -> tuple[str, str]:
    if isinstance(shot, (tuple, list)):
        return str(shot[0]), str(shot[1])
    return shot.query, shot.answer


@dataclass(frozen=True)
class Template:
    """The URIAL layout. Markers, fence and stop strings are fields so other formats can be searched.

    A rendered prompt is::

        <system>\\n
        \\n<query_marker>\\n<fence>\\n<q1>\\n<fence>\\n\\n<answer_marker>\\n<fence>\\n<a1>\\n<fence>\\n
        ... one block pair per example ...
        \\n<query_marker>\\n<fence>\\n<query>\\n<fence>\\n\\n<answer_marker>\\n<fence>\\n

    which is the URIAL repository's assembly (`file text + "\\n# Query:\\n```\\n{q}\\n```\\n"
    + "\\n# Answer:\\n```\\n"`) applied to a context file that ends with a newline.
    """

    query_marker: str = "# Query:"
    answer_marker: str = "# Answer:"
    fence: str = "```"
    # Extra stop strings. The template's own markers and their near variants (`# Question`,
    # `# Instruction`... with the markers' heading prefix) are always added (`__post_init__`),
    # so `stop` is the full list an engine gets.
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        merged = list(dict.fromkeys([*self.derived_stops(), *self.stop]))
        object.__setattr__(self, "stop", tuple(merged))

    def _heading(self) -> tuple[str, list[str]]:
        """The markers' heading prefix ("# ") and role words ("Query", "Question", ...)."""
        words = []
        prefix = ""
        for m in (self.query_marker, self.answer_marker):
            head = re.match(r"^[^\w]*", m).group()
            prefix = prefix or head
            word = m[len(head):].rstrip(": ").strip()
            if word:
                words.append(word)
        return prefix, list(dict.fromkeys(words + list(NEAR_MARKERS)))

    def derived_stops(self) -> list[str]:
        """Stop strings taken from the markers: the heading prefix with each role word
        (`# Query`, `# Question`, `# Answer`, `# User`, `# Instruction`); a marker without a
        heading prefix (`Q:`) stops only at the start of a line."""
        prefix, words = self._heading()
        if prefix.strip():
            return [prefix + w for w in words]
        return ["\n" + m.strip() for m in (self.query_marker, self.answer_marker) if m.strip()]

    @cached_property
    def _role_line(self) -> re.Pattern:
        """A line that opens a new turn: any heading level, any case, of a role word (built
        once per template: `cut` runs on every answer and every streamed chunk)."""
        prefix, words = self._heading()
        head = re.escape(prefix.strip()[:1]) + "+" if prefix.strip() else ""
        alt = "|".join(re.escape(w) for w in words)
        return re.compile(rf"^[ \t]*{head}[ \t]*(?:{alt})\b", re.IGNORECASE | re.MULTILINE)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stop"] = list(self.stop)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Template:
        if not d:
            return cls()
        unknown = set(d) - {"query_marker", "answer_marker", "fence", "stop"}
        if unknown:
            raise ValueError(
                f"template: unknown field(s) {sorted(unknown)}; accepted: "
                "query_marker, answer_marker, fence, stop"
            )
        d = dict(d)
        if "stop" in d:
            d["stop"] = tuple(d["stop"])
        return cls(**d)

    def sampling(self, params: Any) -> Any:
        """`params` (engines' SamplingParams) with this template's stop strings when it has
        none of its own: the one place the stop default is applied."""
        return params if params.stop else params.replace(stop=self.stop)

    # -- rendering -------------------------------------------------------------------------
    def system_block(self, system: str) -> str:
        return system.rstrip("\n") + "\n" if system else ""

    def example_block(self, query: str, answer: str) -> str:
        f = self.fence
        return (
            f"\n{self.query_marker}\n{f}\n{query}\n{f}\n"
            f"\n{self.answer_marker}\n{f}\n{answer}\n{f}\n"
        )

    def query_block(self, query: str) -> str:
        f = self.fence
        return f"\n{self.query_marker}\n{f}\n{query}\n{f}\n\n{self.answer_marker}\n{f}\n"

    def render_context(self, system: str, examples: Sequence[Any]) -> str:
        """The shared prefix (system + examples): what a URIAL prompt file holds."""
        return self.system_block(system) + "".join(self.example_block(*_qa(e)) for e in examples)

    def render(self, system: str, examples: Sequence[Any], query: str) -> str:
        return self.render_context(system, examples) + self.query_block(query)

    def render_conversation(
        self, system: str, examples: Sequence[Any], turns: Sequence[tuple[str, str]], query: str
    ) -> str:
        """Multi-turn: earlier (user, assistant) turns become successive query/answer blocks."""
        return self.render(system, list(examples) + list(turns), query)

    # -- cleaning --------------------------------------------------------------------------
    def cut(self, text: str) -> Cut:
        """Where the answer ends, and what was cut after it.

        The answer ends at the first of: a stop string; a line opening a new turn (a role
        heading such as `## Question:`); the answer block's closing fence, i.e. the first bare
        fence line that leaves an odd count of fences (a fence with an info string, ```python,
        opens a code block inside the answer; the fence after it closes that block). What
        follows the end is leaked scaffolding when it is more than blank space. A repetition
        loop is then cut back to its first occurrence. A leading fence and an unbalanced
        trailing fence (the answer block's own) are dropped."""
        f = self.fence
        end = len(text)
        for s in self.stop:
            i = text.find(s)
            if i != -1:
                end = min(end, i)
        m = self._role_line.search(text, 0, end)
        if m is not None:
            end = m.start()
        count, pos = 0, 0
        for line in text[:end].splitlines(keepends=True):
            bare = line.strip()
            if bare.startswith(f) and not (pos == 0 and bare == f):  # a repeated opening fence
                count += 1
                if bare == f and count % 2 == 1:
                    end = pos
                    break
            pos += len(line)
        leaked = bool(text[end:].strip()) and text[end:].strip() != f
        out = text[:end].strip()
        if out.startswith(f + "\n") or out == f:
            out = out[len(f):].lstrip("\n")
        if out.endswith(f) and out.count(f) % 2 == 1:
            out = out[: -len(f)].rstrip()
        loop = find_loop(out)
        if loop is not None:
            out = out[:loop].rstrip()
        return Cut(out.strip(), leaked=leaked, loop=loop is not None)

    def settled(self, raw: str) -> str:
        """The part of `clean(raw + more)` that no continuation `more` can change (streaming).

        Held back: a tail that may grow into a stop string; an unfinished last line that may
        still become a fence, a role heading or a repeat of an earlier line; everything from
        a line's second occurrence (a third would make a loop cut back to it); a repeating
        phrase at the end (it may go on repeating); trailing whitespace."""
        f = self.fence
        if (f + "\n").startswith(raw.lstrip()):
            return ""  # it may still become the answer block's opening fence
        text = self.cut(raw).text
        if not text:
            return ""
        start = raw.find(text)
        hold = len(raw) - _partial_suffix(raw, self.stop)
        line_start = raw.rfind("\n") + 1
        last = raw[line_start:].strip()
        earlier = [ln.strip() for ln in raw[:line_start].splitlines()]
        if not last or f.startswith(last) or last.startswith((f, "#")) or \
                any(len(e) >= MIN_LINE and e.startswith(last) for e in earlier):
            hold = min(hold, line_start)
        hold = min(hold, start + _loop_hold(text, partial=not raw[-1:].isspace()))
        out = text[: max(0, hold - start)].rstrip()
        # a trailing (partial) fence may be the answer block's closing one
        cut = next((n for n in range(min(len(f), len(out)), 0, -1) if out.endswith(f[:n])), 0)
        return out[: len(out) - cut].rstrip()

    def clean(self, text: str) -> str:
        """The answer without what follows its end (`cut`)."""
        return self.cut(text).text

    def hygiene(self, text: str | None, finish_reason: str | None = None) -> tuple[str | None,
                                                                                 Hygiene | None]:
        """The cleaned answer and its `Hygiene` (None, None for a failed generation)."""
        if text is None:
            return None, None
        c = self.cut(text)
        residual = self._role_line.search(c.text) is not None or find_loop(c.text) is not None
        odd = sum(ln.strip().startswith(self.fence) for ln in c.text.splitlines()) % 2
        return c.text, Hygiene(leaked=int(c.leaked), unbalanced=odd, loop=int(c.loop),
                               max_tokens=int(finish_reason == "length"),
                               residual=int(residual))


def _partial_suffix(text: str, markers: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a marker."""
    best = 0
    for m in markers:
        for n in range(min(len(m) - 1, len(text)), best, -1):
            if text.endswith(m[:n]):
                best = n
                break
    return best


DEFAULT_TEMPLATE = Template()


@dataclass
class Fit:
    """The outcome of fitting one prompt into a context window."""

    prompt: str | None
    kept: list[Any]
    dropped: list[Any] = field(default_factory=list)
    prompt_tokens: int = 0
    max_tokens: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.prompt is not None


class Budget:
    """Token budgeting with the target model's tokenizer.

    Rule: `prompt_tokens + max_tokens <= context_window`. When the full prompt does not fit,
    examples are dropped **from the front** (the one farthest from the query first; selection
    orders examples so the most similar is last, closest to the query), one at a time, until
    it fits. If the system preamble and the bare query alone do not fit, that query fails with
    a reason; the caller records it and goes on with the rest.
    """

    def __init__(self, count_tokens: Callable[[str], int], context_window: int):
        self.context_window = int(context_window)
        # Blocks (the preamble, each example, each query) repeat and are small: cached. Whole
        # prompts are counted uncached: each is new per query and configuration, and a
        # long-running server would otherwise keep up to 65,536 of them (~13 KB each at 3,200
        # tokens: ~850 MB).
        self._exact = count_tokens
        self._count = lru_cache(maxsize=65536)(count_tokens)

    def count(self, text: str) -> int:
        return self._count(text)

    def fit(
        self,
        template: Template,
        system: str,
        examples: Sequence[Any],
        query: str,
        max_tokens: int,
    ) -> Fit:
        examples = list(examples)
        limit = self.context_window - max_tokens
        if limit <= 0:
            return Fit(None, [], examples, 0, max_tokens,
                       f"max_tokens={max_tokens} leaves no room in the context window "
                       f"of {self.context_window} tokens")
        # Block token counts add up to within a couple of tokens of the whole prompt's count;
        # estimate with cached per-block counts, then confirm with one exact count.
        fixed = self.count(template.system_block(system)) + self.count(template.query_block(query))
        sizes = [self.count(template.example_block(*_qa(e))) for e in examples]
        start = 0
        while start < len(examples) and fixed + sum(sizes[start:]) > limit:
            start += 1
        while True:
            kept = examples[start:]
            prompt = template.render(system, kept, query)
            n = self._exact(prompt)
            if n <= limit:
                return Fit(prompt, kept, examples[:start], n, max_tokens)
            if start >= len(examples):
                return Fit(None, [], examples, n, max_tokens,
                           f"prompt does not fit: system preamble + query alone take {n} tokens, "
                           f"and with max_tokens={max_tokens} that exceeds the context window "
                           f"of {self.context_window} tokens")
            start += 1
