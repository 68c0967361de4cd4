"""What a proposal must pass before it joins the search space: a preamble proposal and a
restyled example are each checked here, and a rejection carries its reason.

Preambles: not empty, not over-long, no template scaffolding (the `template_leak` rule of
`icl_search.feedback.rules`), no copy of an eval or confirm query (the leakage guard), and the
preamble with the answer budget fits the base model's context window.

Restyles, beyond the same scaffolding and leakage checks: the content stays (key-token recall
of the original's words, numbers and code names; and, with an embedder, cosine similarity to
the original), the language stays (the `language` rule), and a refusal stays a refusal.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from icl_search.feedback.rules import RuleChecker, RuleItem, is_refusal
from icl_search.prompt import Template

# Words this common carry no content; recall is measured on the rest.
_COMMON = frozenset("""about above after again also because been before being below between
both could does doing down during each from further have having here into just more most once
only other over same should some such than that their them then there these they this those
through under until very were what when where which while will with would your yours you the
and for are but not can its our out all any how who why""".split())  # noqa: SIM905
_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{3,}|\d+(?:\.\d+)?")


class LeakGuard:
    """Refuses text that copies an eval or confirm query (after normalisation), the pool's
    rule applied to proposals: a preamble or an answer must never carry a query it is judged
    on. Queries shorter than `min_words` words are too generic to count as copied."""

    def __init__(self, queries: Iterable[tuple[str, str]], min_words: int = 4):
        from icl_search.study.splits import normalise

        self._norm = normalise
        self.queries = [(qid, normalise(q)) for qid, q in queries
                        if len(normalise(q).split()) >= min_words]

    def copied(self, text: str) -> str | None:
        """The id of the query `text` copies, else None."""
        t = f" {self._norm(text)} "
        return next((qid for qid, q in self.queries if f" {q} " in t), None)


def _text_problem(text: str | None, max_chars: int, template: Template) -> str | None:
    """What every proposal is checked for first: an answer, not empty, not over-long, no
    template scaffolding."""
    if text is None:
        return "no answer from the proposer"
    text = text.strip()
    if not text:
        return "empty"
    if len(text) > max_chars:
        return f"over-long ({len(text)} chars > max_chars {max_chars})"
    if leak := _scaffolding(text, template):
        return f"template-breaking ({leak})"
    return None


@dataclass
class PreambleCheck:
    guard: LeakGuard | None = None
    template: Template = field(default_factory=Template)
    max_chars: int = 2000
    fits: Callable[[str], str | None] | None = None  # preamble -> why it does not fit

    def reason(self, text: str | None) -> str | None:
        """Why the preamble is rejected, or None when it passes."""
        if why := _text_problem(text, self.max_chars, self.template):
            return why
        text = text.strip()
        if self.guard is not None and (qid := self.guard.copied(text)):
            return f"copies eval/confirm query {qid!r}"
        if self.fits is not None and (why := self.fits(text)):
            return f"does not fit the context window ({why})"
        return None


@dataclass
class RestyleCheck:
    guard: LeakGuard | None = None
    template: Template = field(default_factory=Template)
    embed: Callable[[list[str]], np.ndarray] | None = None
    min_cosine: float = 0.8
    min_recall: float = 0.6
    max_chars: int = 8000

    def reason(self, query: str, original: str, text: str | None) -> str | None:
        return self.reasons([(query, original, text)])[0]

    def reasons(self, items: list[tuple[str, str, str | None]]) -> list[str | None]:
        """`reason` for many (query, original, restyle) triples; the texts that pass the
        cheap checks are embedded in one call (one call per restyle took most of the time)."""
        out: list[str | None] = [self._cheap(*it) for it in items]
        todo = [i for i, why in enumerate(out) if why is None]
        if self.embed is not None and todo:
            vecs = np.asarray(self.embed([t for i in todo for t in
                                          (items[i][1], items[i][2].strip())]),
                              dtype=np.float32).reshape(len(todo), 2, -1)
            for i, (a, b) in zip(todo, vecs):
                cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) or 1.0))
                if cos < self.min_cosine:
                    out[i] = f"drops content (cosine {cos:.2f} < {self.min_cosine})"
        for i in todo:
            query, _, text = items[i]
            if out[i] is None and self.guard is not None and \
                    (qid := self.guard.copied(text.strip())) and self.guard.copied(query) != qid:
                out[i] = f"copies eval/confirm query {qid!r}"
        return out

    def _cheap(self, query: str, original: str, text: str | None) -> str | None:
        if why := _text_problem(text, self.max_chars, self.template):
            return why
        text = text.strip()
        lang = RuleChecker(rules=("language",)).check_one(RuleItem("r", original, text))
        if lang:
            return f"changes the language ({lang[0].detail.replace('query', 'original')})"
        if is_refusal(original) and not is_refusal(text):
            return "a refusal restyled into compliance"
        recall = key_token_recall(original, text)
        if recall < self.min_recall:
            return f"drops content (key-token recall {recall:.2f} < {self.min_recall})"
        return None


def key_tokens(text: str) -> set[str]:
    return {t.casefold() for t in _TOKEN.findall(text)} - _COMMON


def key_token_recall(original: str, text: str) -> float:
    """Share of the original's content tokens (words of 4+ letters, numbers, code names)
    found in `text`; 1.0 when the original has none."""
    want = key_tokens(original)
    return len(want & key_tokens(text)) / len(want) if want else 1.0


def _scaffolding(text: str, template: Template) -> str | None:
    hits = RuleChecker(rules=("template_leak",), template=template).check_one(
        RuleItem("p", "", text))
    return hits[0].detail if hits else None
