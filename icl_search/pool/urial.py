"""The URIAL prompt-file format: `parse_urial` / `read_urial` into a `UrialDocument`, and
`render_urial` back.

Each parsed example keeps the exact separator strings found in the file
(`Example.meta["layout"]`, only for blocks that differ from the canonical `Template` layout),
so `render_urial(doc.system, doc.examples)` gives back the file byte for byte, and a file
written by `Template.render_context` parses with no layout at all.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from icl_search.pool.schema import Example, read_text
from icl_search.prompt import DEFAULT_TEMPLATE, Template


def _canonical_layout(t: Template) -> dict[str, str]:
    """The separators `Template.example_block` puts around a query and an answer."""
    f = t.fence
    return {"before": f"\n{t.query_marker}\n{f}\n",
            "between": f"\n{f}\n\n{t.answer_marker}\n{f}\n",
            "after": f"\n{f}\n"}


def _layout_fits(layout: dict[str, str], t: Template) -> bool:
    # A layout recorded with other markers would smuggle them into a prompt rendered with
    # this template; such a layout is ignored and the canonical one used.
    return (all(m in layout.get("before", "") for m in (t.query_marker, t.fence))
            and all(m in layout.get("between", m) for m in (t.answer_marker, t.fence)))


def _block(shot: Any, t: Template, canon: dict[str, str]) -> str:
    if isinstance(shot, (tuple, list)):
        query, answer, meta = str(shot[0]), str(shot[1]), {}
    else:
        query, answer, meta = shot.query, shot.answer, getattr(shot, "meta", None) or {}
    layout = meta.get("layout") or {}
    pieces = {**canon, **layout} if layout and _layout_fits(layout, t) else canon
    if meta.get("query_only"):
        return pieces["before"] + query + pieces["after"]
    return pieces["before"] + query + pieces["between"] + answer + pieces["after"]


def render_urial(system: str, examples: Sequence[Any],
                 template: Template = DEFAULT_TEMPLATE) -> str:
    """A URIAL context (preamble + example blocks), as a prompt file holds it.

    Examples imported from a URIAL file carry their original separators and render exactly
    as they stood in the file; all others render as `template.render_context` does.
    """
    canon = _canonical_layout(template)
    return template.system_block(system) + "".join(_block(e, template, canon) for e in examples)


@dataclass
class UrialDocument:
    """A parsed URIAL prompt file.

    `examples` holds every block in file order, including query-only blocks (answer "" and
    `meta["query_only"] = True`), so `render()` reproduces the file byte for byte. `tail`
    is only used by a file with no blocks at all: what follows its preamble.
    """

    system: str
    examples: list[Example]
    template: Template = DEFAULT_TEMPLATE
    tail: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def answered(self) -> list[Example]:
        return [e for e in self.examples if not e.meta.get("query_only")]

    def render(self) -> str:
        if not self.examples:
            return self.system + self.tail
        return render_urial(self.system, self.examples, self.template)


def _part(text: str, start: int, end: int, marker_len: int, fence: str
          ) -> tuple[str, str, str, str, bool]:
    """Split one marked block `text[start:end]` (marker line, fenced content, whatever
    follows) into (opening, content, closing, rest, closed).

    `opening` runs to just after the opening fence and the newline after it, if any;
    `closing` is the last fence of the block with the newline before it and the rest of its
    line; `rest` is what follows (blank lines, or prose between blocks), which belongs to the
    next block's opening. Without a closing fence the content runs to the last non-blank.
    """
    s = text[start:end]
    open_end = s.index(fence, marker_len) + len(fence)
    for newline in ("\r\n", "\n"):
        if s.startswith(newline, open_end):
            open_end += len(newline)
            break
    close_at = s.rfind(fence, open_end)
    closed = close_at != -1
    if closed:
        content_end = close_at
        for newline in ("\r\n", "\n"):
            if s.endswith(newline, open_end, content_end):
                content_end -= len(newline)
                break
        eol = s.find("\n", close_at + len(fence))
    else:
        content_end = max(len(s.rstrip()), open_end)
        eol = s.find("\n", content_end)
    close_end = len(s) if eol == -1 else eol + 1
    return (s[:open_end], s[open_end:content_end], s[content_end:close_end], s[close_end:],
            closed)


def parse_urial(text: str, *, stem: str = "urial", source: str = "urial",
                template: Template = DEFAULT_TEMPLATE) -> UrialDocument:
    """Parse a URIAL prompt file leniently: any whitespace around markers and fences, queries
    inline with their fences, query-only blocks. Block ids are `<stem>-<n>` (n from 1, in
    file order, query-only blocks counted).

    A block starts at a line holding only the query marker that is followed by a fence;
    a marker quoted in the preamble's prose does not count.
    """
    qm, am, f = (re.escape(x) for x in (template.query_marker, template.answer_marker,
                                         template.fence))
    query_re = re.compile(rf"^{qm}[ \t\r]*\n\s*{f}", re.MULTILINE)
    answer_re = re.compile(rf"^{am}[ \t\r]*\n\s*{f}", re.MULTILINE)
    starts = [m.start() for m in query_re.finditer(text)]
    doc_warnings: list[str] = []

    def line_of(pos: int) -> int:
        return text.count("\n", 0, pos) + 1

    if not starts:
        if not text.strip():
            return UrialDocument("", [], template, text, doc_warnings)
        system = text.rstrip("\n")
        return UrialDocument(system, [], template, text[len(system):], doc_warnings)

    prefix = text[:starts[0]]
    if prefix.strip():
        # The preamble keeps trailing spaces on its last line; the newline ending that line is
        # the one `Template.system_block` adds back; blank lines after it are layout.
        nl = prefix.index("\n", len(prefix.rstrip()))
        system, lead = prefix[:nl], prefix[nl + 1:]
    else:
        system, lead = "", prefix

    canon = _canonical_layout(template)
    examples: list[Example] = []
    for n, start in enumerate(starts, 1):
        end = starts[n] if n < len(starts) else len(text)
        am_match = answer_re.search(text, start, end)
        q_end = am_match.start() if am_match else end
        q_open, query, q_close, q_rest, q_closed = _part(
            text, start, q_end, len(template.query_marker), template.fence)
        if not q_closed:
            doc_warnings.append(f"line {line_of(start)}: query block has no closing fence")
        if am_match is None:
            layout = {"before": lead + q_open, "after": q_close}
            answer, lead, meta = "", q_rest, {"query_only": True}
        else:
            a_open, answer, a_close, a_rest, a_closed = _part(
                text, q_end, end, len(template.answer_marker), template.fence)
            if not a_closed:
                doc_warnings.append(f"line {line_of(q_end)}: answer block has no closing fence")
            layout = {"before": lead + q_open, "between": q_close + q_rest + a_open,
                      "after": a_close}
            lead, meta = a_rest, {}
        if lead.strip():
            at = end - len(lead.lstrip())
            doc_warnings.append(f"line {line_of(at)}: text between blocks kept "
                                "in the document layout, not in any example")
        if n == len(starts):
            # Whatever ends the file belongs to the last block, so the examples alone
            # reproduce it.
            layout["after"] += lead
        # Kept whole (not only the pieces that differ) so it is recognisably tied to the
        # markers it was read with.
        if any(v != canon[k] for k, v in layout.items()):
            meta["layout"] = layout
        examples.append(Example(id=f"{stem}-{n}", query=query, answer=answer,
                                source=source, meta=meta))
    return UrialDocument(system, examples, template, "", doc_warnings)


def read_urial(path: str | Path, template: Template = DEFAULT_TEMPLATE) -> UrialDocument:
    """Parse a URIAL prompt file; its bytes are read as they are (no newline translation)."""
    path = Path(path)
    text = read_text(path)
    return parse_urial(text, stem=path.stem, source=f"urial:{path.name}", template=template)


