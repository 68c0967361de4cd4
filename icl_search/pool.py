"""The example pool: the `Example` schema, loading and saving (JSONL / Parquet / CSV, polars
underneath), validation that names file, line and field, and the importers (URIAL prompt
files, Alpaca JSON, ShareGPT / OpenAI-messages, just-eval outputs).

A pool file has one example per row with the fields `id`, `query`, `answer` (required, text)
and `category`, `tags`, `source`, `meta` (optional). Any other field is kept in `meta`.

URIAL prompt files are parsed into a `UrialDocument` that keeps, per example, the exact
separator strings found in the file (`Example.meta["layout"]`, only for blocks that differ from the
canonical `Template` layout), so `render_urial(doc.system, doc.examples)` gives back the file
byte for byte, and a file written by `Template.render_context` parses with no layout at all.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import polars as pl

from icl_search.io import atomic_write
from icl_search.prompt import DEFAULT_TEMPLATE, Template

# Limits beyond which a row is almost certainly a parsing accident (a whole file in one cell,
# an answer truncated to nothing) rather than an example worth a place in a prompt.
MAX_QUERY_CHARS = 8_000
MAX_ANSWER_CHARS = 20_000
MIN_ANSWER_CHARS = 2

POOL_SUFFIXES = (".jsonl", ".parquet", ".csv")
IMPORT_FORMATS = ("urial", "alpaca", "sharegpt", "just-eval")
REQUIRED_FIELDS = ("id", "query", "answer")
_KNOWN_FIELDS = ("id", "query", "answer", "category", "tags", "source", "meta")
DEFAULT_CATEGORY = "general"
DEFAULT_SOURCE = "project"
SYSTEM_SUFFIX = ".system.txt"
_TAG_SPLIT = re.compile(r"[,;]")


class PoolError(ValueError):
    """A pool file or row is invalid; the message names the file, line and field.

    `problems` holds every `Problem` found when the error comes from validation.
    """

    def __init__(self, message: str, problems: Sequence[Problem] = ()):
        super().__init__(message)
        self.problems = list(problems)


class PoolWarning(UserWarning):
    """Something an importer dropped or could not read cleanly; the import still succeeded."""


@dataclass(frozen=True)
class Example:
    id: str
    query: str
    answer: str
    category: str = DEFAULT_CATEGORY
    tags: tuple[str, ...] = ()
    source: str = DEFAULT_SOURCE
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tags"] = list(self.tags)
        return d


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a pool file. `line` is the 1-based file line (JSONL, CSV; the CSV
    header is line 1) or the 1-based row (Parquet, `unit="row"`); None for the whole file."""

    path: Path
    line: int | None
    field: str | None
    message: str
    unit: str = "line"

    @property
    def where(self) -> str:
        if self.line is None:
            return str(self.path)
        return f"{self.path}:{self.line}" if self.unit == "line" else f"{self.path}:row {self.line}"

    def __str__(self) -> str:
        return f"{self.where}: {self.field}: {self.message}" if self.field else \
            f"{self.where}: {self.message}"


class Validation(NamedTuple):
    """What `check` found: the examples of every valid row, and every problem."""

    examples: list[Example]
    problems: list[Problem]


# -- the pool ------------------------------------------------------------------------------
@dataclass
class Pool:
    """An ordered set of examples with unique ids.

    `system` is a preamble that came with the examples (a URIAL import, or a
    `<stem>.system.txt` file beside the pool file), else None.
    """

    examples: list[Example]
    path: Path | None = None
    system: str | None = None

    def __post_init__(self) -> None:
        self.examples = list(self.examples)
        self._by_id: dict[str, Example] = {}
        self._index(self.examples)

    def _index(self, examples: Iterable[Example]) -> None:
        dups = []
        for e in examples:
            if e.id in self._by_id:
                dups.append(e.id)
            self._by_id[e.id] = e
        if dups:
            raise PoolError(f"duplicate example id(s): {', '.join(map(repr, dups[:10]))}"
                            + (f" and {len(dups) - 10} more" if len(dups) > 10 else ""))

    def __len__(self) -> int:
        return len(self.examples)

    def __iter__(self) -> Iterator[Example]:
        return iter(self.examples)

    def __contains__(self, id_: object) -> bool:
        return id_ in self._by_id

    def __getitem__(self, id_: str) -> Example:
        try:
            return self._by_id[id_]
        except KeyError:
            where = f" {self.path}" if self.path else ""
            raise KeyError(f"no example with id {id_!r} in the pool{where}") from None

    @property
    def ids(self) -> list[str]:
        return [e.id for e in self.examples]

    @property
    def categories(self) -> list[str]:
        return sorted({e.category for e in self.examples})

    @property
    def fingerprint(self) -> str:
        """Content hash of ids, queries and answers in order: changes whenever the pool does."""
        h = hashlib.sha256()
        for e in self.examples:
            h.update(json.dumps([e.id, e.query, e.answer], ensure_ascii=False).encode())
        return h.hexdigest()[:16]

    # -- growing ---------------------------------------------------------------------------
    def add(self, examples: Iterable[Example], *, replace: bool = False) -> None:
        """Append examples. An id already in the pool is an error, or with `replace=True`
        the new example takes the old one's place (same position)."""
        examples = list(examples)
        new_ids = Counter(e.id for e in examples)
        clashes = [i for i, n in new_ids.items() if n > 1 or (i in self._by_id and not replace)]
        if clashes:
            raise PoolError(f"duplicate example id(s): {', '.join(map(repr, clashes[:10]))}"
                            + (f" and {len(clashes) - 10} more" if len(clashes) > 10 else "")
                            + ("" if replace else " (use replace=True to overwrite)"))
        position = {e.id: i for i, e in enumerate(self.examples)}
        for e in examples:
            if e.id in position:
                self.examples[position[e.id]] = e
            else:
                self.examples.append(e)
            self._by_id[e.id] = e

    @classmethod
    def merge(cls, *pools: Pool) -> Pool:
        """One pool holding every example of `pools`, in order; ids must not clash."""
        merged = cls([])
        for p in pools:
            merged.add(p.examples)
        systems = {p.system for p in pools if p.system}
        merged.system = systems.pop() if len(systems) == 1 else None
        return merged

    # -- files -----------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> Pool:
        """Read a pool file (format by extension); any problem raises `PoolError` listing the
        first few as `file:line: field: message`. A `<stem>.system.txt` beside it becomes
        `system`."""
        path = Path(path)
        examples, problems = check(path)
        if problems:
            raise PoolError(_summarise(path, problems), problems)
        return cls(examples, path, _read_system_file(path))

    def save(self, path: str | Path) -> Path:
        """Write the pool atomically; the format follows the extension (.jsonl/.parquet/.csv).

        `meta` is kept: a JSON object per row in JSONL, a JSON string column in Parquet and
        CSV (tags there are a list column and a comma-separated string)."""
        path = Path(path)
        suffix = _pool_suffix(path)
        if suffix == ".jsonl":
            with atomic_write(path) as fh:
                for e in self.examples:
                    fh.write(json.dumps(_row(e), ensure_ascii=False) + "\n")
        elif suffix == ".parquet":
            with atomic_write(path, "wb") as fh:
                self.to_frame().write_parquet(fh)
        else:
            frame = self.to_frame().with_columns(pl.col("tags").list.join(","))
            with atomic_write(path, "wb") as fh:
                frame.write_csv(fh)
        return path

    def to_frame(self) -> pl.DataFrame:
        """The pool as a polars frame: id, query, answer, category, tags (list), source, meta
        (JSON text, empty when there is none)."""
        return pl.DataFrame(
            {
                "id": [e.id for e in self.examples],
                "query": [e.query for e in self.examples],
                "answer": [e.answer for e in self.examples],
                "category": [e.category for e in self.examples],
                "tags": [list(e.tags) for e in self.examples],
                "source": [e.source for e in self.examples],
                "meta": [json.dumps(e.meta, ensure_ascii=False) if e.meta else ""
                         for e in self.examples],
            },
            schema={"id": pl.String, "query": pl.String, "answer": pl.String,
                    "category": pl.String, "tags": pl.List(pl.String), "source": pl.String,
                    "meta": pl.String},
        )


def _row(e: Example) -> dict[str, Any]:
    d = {"id": e.id, "query": e.query, "answer": e.answer, "category": e.category,
         "tags": list(e.tags), "source": e.source}
    if e.meta:
        d["meta"] = e.meta
    return d


def system_path(pool_path: str | Path) -> Path:
    """Where the preamble that goes with a pool file lives: `<stem>.system.txt` beside it."""
    p = Path(pool_path)
    return p.with_name(p.stem + SYSTEM_SUFFIX)


def write_system(pool_path: str | Path, system: str) -> Path:
    """Write a pool's preamble beside it (atomically), ending with one newline."""
    path = system_path(pool_path)
    with atomic_write(path, "w", encoding="utf-8") as fh:
        fh.write(system + "\n")
    return path


def _read_system_file(pool_path: Path) -> str | None:
    p = system_path(pool_path)
    if not p.is_file():
        return None
    text = p.read_bytes().decode("utf-8")
    return text.removesuffix("\n")


def _unsupported(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in POOL_SUFFIXES:
        return None
    return (f"unsupported pool format {suffix or '(no extension)'!r}: use one of "
            f"{', '.join(POOL_SUFFIXES)} (convert other formats with "
            f"`icl-search pool import --format {{{','.join(IMPORT_FORMATS)}}}`)")


def _pool_suffix(path: Path) -> str:
    why = _unsupported(path)
    if why:
        raise PoolError(f"{path}: {why}")
    return path.suffix.lower()


def _summarise(path: Path, problems: Sequence[Problem], shown: int = 5) -> str:
    if len(problems) == 1:
        return str(problems[0])
    lines = [f"{path}: {len(problems)} problems:"] + [f"  {p}" for p in problems[:shown]]
    if len(problems) > shown:
        lines.append(f"  ... and {len(problems) - shown} more "
                     f"(see all with `icl-search pool validate {path}`)")
    return "\n".join(lines)


# -- reading and validation ----------------------------------------------------------------
def validate(path: str | Path) -> list[Problem]:
    """Every problem in a pool file, in file order, each naming its line (or row) and field."""
    return check(path).problems


def check(path: str | Path) -> Validation:
    """Read a pool file and validate every row: the examples of the valid rows and every
    problem (invalid JSON line, missing field, non-text value, empty or absurdly long text,
    duplicate id, duplicate query text)."""
    path = Path(path)
    if not path.is_file():
        return Validation([], [Problem(path, None, None, "pool file not found")])
    why = _unsupported(path)
    if why:
        return Validation([], [Problem(path, None, None, why)])
    suffix = path.suffix.lower()
    reader = {".jsonl": _jsonl_rows, ".csv": _csv_rows, ".parquet": _parquet_rows}[suffix]
    unit = "row" if suffix == ".parquet" else "line"
    rows, problems = reader(path)
    examples = []
    first_id: dict[str, int] = {}
    first_query: dict[str, tuple[int, str | None]] = {}
    for line, row in rows:
        def report(fld: str | None, msg: str, line: int = line) -> None:
            problems.append(Problem(path, line, fld, msg, unit))

        example = _example_from_row(row, report, tabular=suffix != ".jsonl")
        # Repeats are checked on the raw row, so a repeat of an invalid row is still reported.
        id_, query = _text_or_none(row.get("id")), _text_or_none(row.get("query"))
        repeated = False
        if id_ is not None:
            if id_ in first_id:
                report("id", f"duplicate id {id_!r} (first at {unit} {first_id[id_]})")
                repeated = True
            else:
                first_id[id_] = line
        if query is not None:
            key = normalise_query(query)
            if key in first_query:
                n, other = first_query[key]
                report("query", f"duplicate query: same text as id {other!r} ({unit} {n})")
                repeated = True
            else:
                first_query[key] = (line, id_)
        if example is not None and not repeated:
            examples.append(example)
    problems.sort(key=lambda p: (p.line or 0))
    return Validation(examples, problems)


def _text_or_none(v: Any) -> str | None:
    return v if isinstance(v, str) and v.strip() else None


def normalise_query(text: str) -> str:
    """The form under which two queries count as the same: whitespace collapsed, case folded."""
    return " ".join(text.split()).casefold()


def _jsonl_rows(path: Path) -> tuple[list[tuple[int, dict]], list[Problem]]:
    rows, problems = [], []
    # Binary iteration splits on b"\n" only, so line numbers match what an editor shows.
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                text = raw.rstrip(b"\r\n").decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                problems.append(Problem(path, lineno, None,
                                        f"not valid UTF-8 (byte {exc.start + 1})"))
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                problems.append(Problem(path, lineno, None,
                                        f"invalid JSON: {exc.msg} (column {exc.colno})"))
                continue
            if not isinstance(row, dict):
                problems.append(Problem(path, lineno, None,
                                        f"expected a JSON object, got {_type_name(row)}"))
                continue
            rows.append((lineno, row))
    return rows, problems


def _columns_problems(path: Path, columns: Sequence[str], line: int | None, unit: str
                      ) -> list[Problem]:
    return [Problem(path, line, c, "missing column", unit)
            for c in REQUIRED_FIELDS if c not in columns]


def _csv_rows(path: Path) -> tuple[list[tuple[int, dict]], list[Problem]]:
    try:
        # Every column as text: a CSV cell has no type, and "007" must stay an id, not 7.
        df = pl.read_csv(path, infer_schema=False)
    except (pl.exceptions.PolarsError, OSError) as exc:
        return [], [Problem(path, None, None, f"cannot read CSV: {_first_line(exc)}")]
    problems = _columns_problems(path, df.columns, 1, "line")
    rows = []
    # polars does not report where a row starts; recover it from the row's own text: a row
    # spans one line plus one per newline inside its quoted cells. A blank line is a row of
    # nulls (one line, no data).
    line = 2
    for row in df.iter_rows(named=True):
        values = [v for v in row.values() if v is not None]
        if values:
            rows.append((line, {k: ("" if v is None else v) for k, v in row.items()}))
        line += 1 + sum(v.count("\n") for v in values)
    return rows, problems


def _parquet_rows(path: Path) -> tuple[list[tuple[int, dict]], list[Problem]]:
    try:
        df = pl.read_parquet(path)
    except (pl.exceptions.PolarsError, OSError) as exc:
        return [], [Problem(path, None, None, f"cannot read Parquet: {_first_line(exc)}")]
    problems = _columns_problems(path, df.columns, None, "row")
    return list(enumerate(df.iter_rows(named=True), 1)), problems


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _type_name(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, (list, tuple)):
        return "list"
    if isinstance(v, dict):
        return "object"
    return type(v).__name__


def _example_from_row(row: dict[str, Any], report: Callable[[str | None, str], None],
                      *, tabular: bool) -> Example | None:
    """Check one row, reporting each problem; the `Example` when the row is valid.

    In a table (CSV, Parquet) a missing column is reported once, on the header, not per row.
    """
    ok = True
    text: dict[str, str] = {}
    for name in REQUIRED_FIELDS:
        if name not in row:
            if not tabular:
                report(name, "missing field")
            ok = False
            continue
        v = row[name]
        if not isinstance(v, str):
            report(name, "missing value (null)" if v is None else
                   f"must be text, got {_type_name(v)}")
            ok = False
        elif not v.strip():
            report(name, "is empty")
            ok = False
        else:
            text[name] = v
    if "query" in text and len(text["query"]) > MAX_QUERY_CHARS:
        report("query", f"too long: {len(text['query']):,} characters "
                        f"(limit {MAX_QUERY_CHARS:,})")
        ok = False
    if "answer" in text:
        n = len(text["answer"])
        if n > MAX_ANSWER_CHARS:
            report("answer", f"too long: {n:,} characters (limit {MAX_ANSWER_CHARS:,})")
            ok = False
        elif len(text["answer"].strip()) < MIN_ANSWER_CHARS:
            report("answer", f"too short: {len(text['answer'].strip())} character "
                             f"(minimum {MIN_ANSWER_CHARS})")
            ok = False

    optional: dict[str, str] = {}
    for name, default in (("category", DEFAULT_CATEGORY), ("source", DEFAULT_SOURCE)):
        v = row.get(name)
        if v is None or (isinstance(v, str) and not v.strip()):
            optional[name] = default
        elif not isinstance(v, str):
            report(name, f"must be text, got {_type_name(v)}")
            ok = False
        else:
            optional[name] = v.strip()

    tags: tuple[str, ...] = ()
    v = row.get("tags")
    if isinstance(v, str):
        tags = tuple(t.strip() for t in _TAG_SPLIT.split(v) if t.strip())
    elif isinstance(v, (list, tuple)):
        if all(isinstance(t, str) for t in v):
            tags = tuple(t.strip() for t in v if t.strip())
        else:
            report("tags", "every tag must be text")
            ok = False
    elif v is not None:
        report("tags", f"must be a list of text or a comma/semicolon-separated string, "
                       f"got {_type_name(v)}")
        ok = False

    meta: dict[str, Any] = {}
    v = row.get("meta")
    if isinstance(v, str) and v.strip():
        try:
            v = json.loads(v)
        except json.JSONDecodeError as exc:
            report("meta", f"not valid JSON: {exc.msg}")
            ok = False
            v = {}
    if isinstance(v, dict):
        meta = dict(v)
    elif v is not None and v != "":
        report("meta", f"must be an object, got {_type_name(v)}")
        ok = False
    # Fields the schema does not know are kept, not dropped: they may be someone's labels.
    for k, val in row.items():
        if k not in _KNOWN_FIELDS and not (tabular and val in ("", None)):
            meta.setdefault(k, val)

    if not ok:
        return None
    return Example(id=text["id"], query=text["query"], answer=text["answer"],
                   category=optional["category"], tags=tags, source=optional["source"],
                   meta=meta)


# -- URIAL prompt files --------------------------------------------------------------------
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
    text = _read_text(path)
    return parse_urial(text, stem=path.stem, source=f"urial:{path.name}", template=template)


# -- importers -----------------------------------------------------------------------------
def import_file(format: str, in_path: str | Path, *, instructions: str | Path | None = None,
                template: Template = DEFAULT_TEMPLATE) -> Pool:
    """Build a pool from another format: "urial", "alpaca", "sharegpt" or "just-eval"
    (which needs `instructions`, the just-eval instructions file its outputs are joined to).

    Ids are `<file stem>-<n>` (n: 1-based position in the file; for just-eval, the just-eval
    id). Rows that would not validate (empty or absurdly long text, repeated query) are left
    out with a `PoolWarning`, so the result always saves as a valid pool. A URIAL preamble
    becomes `pool.system`.
    """
    in_path = Path(in_path)
    if format not in IMPORT_FORMATS:
        raise PoolError(f"unknown import format {format!r}: use one of "
                        f"{', '.join(IMPORT_FORMATS)}")
    if not in_path.is_file():
        raise PoolError(f"{in_path}: file not found")
    system = None
    if format == "urial":
        doc = read_urial(in_path, template)
        for w in doc.warnings:
            warnings.warn(f"{in_path}: {w}", PoolWarning, stacklevel=2)
        skipped = len(doc.examples) - len(doc.answered)
        if skipped:
            warnings.warn(f"{in_path}: {skipped} query-only block(s) without an answer left "
                          "out of the pool (`read_urial` keeps them)", PoolWarning, stacklevel=2)
        candidates, system = doc.answered, doc.system or None
    elif format == "alpaca":
        candidates = _import_alpaca(in_path)
    elif format == "sharegpt":
        candidates = _import_sharegpt(in_path)
    else:
        if instructions is None:
            raise PoolError("just-eval import needs the instructions file its outputs are "
                            "joined to (--instructions FILE)")
        candidates = _import_just_eval(in_path, Path(instructions))
    return Pool(_keep_valid(candidates, in_path), None, system)


def _keep_valid(examples: Sequence[Example], path: Path) -> list[Example]:
    kept, reasons = [], Counter()
    seen: set[str] = set()
    found: list[str] = []

    def report(fld: str | None, msg: str) -> None:
        found.append(f"{fld} {msg.split(':')[0]}")

    for e in examples:
        found.clear()
        _example_from_row(_row(e), report, tabular=False)
        key = normalise_query(e.query)
        if not found and key in seen:
            found.append("duplicate query")
        if found:
            reasons[found[0]] += 1
            continue
        seen.add(key)
        kept.append(e)
    if reasons:
        detail = ", ".join(f"{n} {why}" for why, n in reasons.most_common())
        warnings.warn(f"{path}: left out {sum(reasons.values())} of {len(examples)} rows "
                      f"({detail})", PoolWarning, stacklevel=3)
    return kept


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PoolError(f"{path}: not valid UTF-8 (byte {exc.start + 1})") from None


def _json_records(path: Path) -> list[tuple[str, Any]]:
    """Records of a JSON list file or a JSONL file, each with where it stands ("line 3" or
    "item 3"), for importers whose inputs come either way."""
    text = _read_text(path)
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PoolError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg} "
                            f"(column {exc.colno})") from None
        return [(f"item {i}", item) for i, item in enumerate(items, 1)]
    records = []
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            records.append((f"line {lineno}", json.loads(line)))
        except json.JSONDecodeError as exc:
            raise PoolError(f"{path}:{lineno}: invalid JSON: {exc.msg} "
                            f"(column {exc.colno})") from None
    return records


def _where(path: Path, at: str) -> str:
    return f"{path}:{at.split(' ')[1]}" if at.startswith("line") else f"{path}: {at}"


def _import_alpaca(path: Path) -> list[Example]:
    out = []
    for n, (at, rec) in enumerate(_json_records(path), 1):
        if not isinstance(rec, dict):
            raise PoolError(f"{_where(path, at)}: expected an object with instruction, input, "
                            f"output; got {_type_name(rec)}")
        for key in ("instruction", "output"):
            if not isinstance(rec.get(key), str):
                raise PoolError(f"{_where(path, at)}: {key}: "
                                + ("missing field" if key not in rec
                                   else f"must be text, got {_type_name(rec[key])}"))
        extra = rec.get("input")
        query = rec["instruction"]
        if isinstance(extra, str) and extra.strip():
            query = f"{query.rstrip()}\n\n{extra.strip()}"
        out.append(Example(id=f"{path.stem}-{n}", query=query, answer=rec["output"],
                           category=_category(rec), source=f"alpaca:{path.name}"))
    return out


_USER_ROLES = {"human", "user"}
_ASSISTANT_ROLES = {"gpt", "assistant", "chatgpt", "bard", "bing", "model"}


def _turn_text(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts: keep the text ones
        parts = [p.get("text") for p in content if isinstance(p, dict)
                 and p.get("type") == "text" and isinstance(p.get("text"), str)]
        return "\n".join(parts) if parts else None
    return None


def _first_exchange(turns: list[Any]) -> tuple[str, str] | None:
    query = None
    for t in turns:
        if not isinstance(t, dict):
            return None
        role = str(t.get("from", t.get("role", ""))).lower()
        text = _turn_text(t.get("value", t.get("content")))
        if query is None and role in _USER_ROLES:
            query = text
        elif query is not None and role in _ASSISTANT_ROLES:
            return (query, text) if text is not None else None
    return None


def _import_sharegpt(path: Path) -> list[Example]:
    out, unusable = [], 0
    for n, (at, rec) in enumerate(_json_records(path), 1):
        turns = rec.get("conversations", rec.get("messages")) if isinstance(rec, dict) else None
        if not isinstance(turns, list):
            raise PoolError(f"{_where(path, at)}: expected an object with 'conversations' "
                            "(ShareGPT) or 'messages' (OpenAI) list")
        pair = _first_exchange(turns)
        if pair is None or pair[0] is None:
            unusable += 1
            continue
        out.append(Example(id=f"{path.stem}-{n}", query=pair[0], answer=pair[1],
                           category=_category(rec), source=f"sharegpt:{path.name}"))
    if unusable:
        warnings.warn(f"{path}: {unusable} conversation(s) without a user turn followed by an "
                      "assistant turn left out", PoolWarning, stacklevel=3)
    return out


def _category(rec: dict[str, Any]) -> str:
    c = rec.get("category")
    return c.strip() if isinstance(c, str) and c.strip() else DEFAULT_CATEGORY


def _read_ndjson(path: Path, columns: Sequence[str]) -> pl.DataFrame:
    if not path.is_file():
        raise PoolError(f"{path}: file not found")
    try:
        df = pl.read_ndjson(path, infer_schema_length=None)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise PoolError(f"{path}: cannot read JSONL: {_first_line(exc)}") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise PoolError(f"{path}: missing field(s) {', '.join(missing)} "
                        f"(found: {', '.join(df.columns)})")
    return df


def _import_just_eval(outputs: Path, instructions: Path) -> list[Example]:
    out_df = _read_ndjson(outputs, ("id", "output"))
    ins_df = _read_ndjson(instructions, ("id", "instruction"))
    # Ids are numbers in one release and strings in another: join on their text.
    out_df = out_df.with_columns(pl.col("id").cast(pl.String))
    ins_df = ins_df.with_columns(pl.col("id").cast(pl.String))
    keep = [c for c in ("id", "instruction", "category", "dataset") if c in ins_df.columns]
    joined = out_df.join(ins_df.select(keep), on="id", how="inner", maintain_order="left")
    unmatched = out_df.height - joined.height
    if unmatched:
        warnings.warn(f"{outputs}: {unmatched} output(s) whose id is not in {instructions} "
                      "left out", PoolWarning, stacklevel=3)
    source = f"just-eval:{outputs.name}"
    examples = []
    for row in joined.iter_rows(named=True):
        generator = row.get("generator")
        examples.append(Example(
            id=f"{outputs.stem}-{row['id']}",
            query=row["instruction"] or "",
            answer=row["output"] or "",
            category=row.get("category") or DEFAULT_CATEGORY,
            tags=(row["dataset"],) if row.get("dataset") else (),
            source=f"just-eval:{Path(generator).stem}" if generator else source,
        ))
    return examples
