"""The pool's schema and its validation: the `Example` row, `PoolError` / `Problem`, and
`check` / `validate`, which read a pool file (JSONL, CSV, Parquet) and report every problem
with its file, line (or row) and field.

A pool file has one example per row with the fields `id`, `query`, `answer` (required, text)
and `category`, `tags`, `source`, `meta` (optional). An unknown field is kept in `meta`
(someone's own labels survive a round trip), except a near-miss of a schema field that the
row lacks (`qeury` in a row with no `query`, `tag` in a row with no `tags`): that is a
misspelling, and an error ("unknown field 'qeury', did you mean 'query'?") rather than an
example silently missing its query or its tags. A file with no example is an error too.
A row may carry `reference` (a strong answer to its query, read by reference-anchored judges);
when present it must be non-empty text, and it is kept in `meta`.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import polars as pl

from icl_search.errors import IclSearchError, first_line
from icl_search.evalset import REFERENCE_FIELD, reference_problem
from icl_search.io import json_type, read_jsonl_objects

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
# How close (difflib ratio) an unknown field must be to a schema field to count as its typo.
NEAR_MISS_CUTOFF = 0.75
_TAG_SPLIT = re.compile(r"[,;]")


class PoolError(IclSearchError, ValueError):
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


def row_of(e: Example) -> dict[str, Any]:
    """One example as a pool-file row (JSONL object): `meta` only when there is one."""
    d = {"id": e.id, "query": e.query, "answer": e.answer, "category": e.category,
         "tags": list(e.tags), "source": e.source}
    if e.meta:
        d["meta"] = e.meta
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


def _unsupported(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in POOL_SUFFIXES:
        return None
    return (f"unsupported pool format {suffix or '(no extension)'!r}: use one of "
            f"{', '.join(POOL_SUFFIXES)} (convert other formats with "
            f"`icl-search pool import --format {{{','.join(IMPORT_FORMATS)}}}`)")


def pool_suffix(path: Path) -> str:
    why = _unsupported(path)
    if why:
        raise PoolError(f"{path}: {why}")
    return path.suffix.lower()


def summarise(path: Path, problems: Sequence[Problem], shown: int = 5) -> str:
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
    if not rows and not problems:
        return Validation([], [Problem(path, None, None, "no examples: the pool file is empty")])
    examples = []
    first_id: dict[str, int] = {}
    first_query: dict[str, tuple[int, str | None]] = {}
    for line, row in rows:
        def report(fld: str | None, msg: str, line: int = line) -> None:
            problems.append(Problem(path, line, fld, msg, unit))

        example = example_from_row(row, report, tabular=suffix != ".jsonl")
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
            meta = row.get("meta")
            variant_of = meta.get("original_id") if isinstance(meta, dict) else None
            # a variant (a restyled answer, icl_search.propose) repeats its original's query
            if key in first_query and first_query[key][1] != variant_of:
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
    bad: list[tuple[int, str]] = []
    rows = list(read_jsonl_objects(path, PoolError, "pool file", problems=bad))
    return rows, [Problem(path, line, None, msg) for line, msg in bad]


def misspelled(names: Sequence[str]) -> dict[str, str]:
    """The near-misses among `names`: `{unknown name: schema field it misspells}`, for each
    unknown name close to a schema field that `names` lacks (difflib ratio >= 0.75, case
    ignored). Other unknown names are someone's own fields, kept in `meta`."""
    absent = [f for f in _KNOWN_FIELDS if f not in names]
    out: dict[str, str] = {}
    for name in names:
        if name in _KNOWN_FIELDS or not isinstance(name, str) or not absent:
            continue
        close = difflib.get_close_matches(name.lower(), absent, n=1, cutoff=NEAR_MISS_CUTOFF)
        if close and close[0] not in out.values():
            out[name] = close[0]
    return out


def _unknown_field(name: str, target: str, what: str = "field") -> str:
    return f"unknown {what} {name!r}, did you mean {target!r}?"


def _columns_problems(path: Path, columns: Sequence[str], line: int | None, unit: str
                      ) -> list[Problem]:
    typos = misspelled(columns)
    return [Problem(path, line, None, _unknown_field(name, target, "column"), unit)
            for name, target in typos.items()] + \
        [Problem(path, line, c, "missing column", unit)
         for c in REQUIRED_FIELDS if c not in columns and c not in typos.values()]


def _csv_rows(path: Path) -> tuple[list[tuple[int, dict]], list[Problem]]:
    try:
        # Every column as text: a CSV cell has no type, and "007" must stay an id, not 7.
        df = pl.read_csv(path, infer_schema=False)
    except (pl.exceptions.PolarsError, OSError) as exc:
        return [], [Problem(path, None, None, f"cannot read CSV: {first_line(exc)}")]
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
        return [], [Problem(path, None, None, f"cannot read Parquet: {first_line(exc)}")]
    problems = _columns_problems(path, df.columns, None, "row")
    return list(enumerate(df.iter_rows(named=True), 1)), problems


def example_from_row(row: dict[str, Any], report: Callable[[str | None, str], None],
                      *, tabular: bool) -> Example | None:
    """Check one row, reporting each problem; the `Example` when the row is valid.

    In a table (CSV, Parquet) a missing column is reported once, on the header, not per row.
    """
    ok = True
    # A misspelled field makes the row invalid (in a table it is reported once, on the header).
    typos = misspelled(list(row))
    for name, target in typos.items():
        if not tabular:
            report(None, _unknown_field(name, target))
        ok = False
    text: dict[str, str] = {}
    for name in REQUIRED_FIELDS:
        if name not in row:
            if not tabular and name not in typos.values():
                report(name, "missing field")
            ok = False
            continue
        v = row[name]
        if not isinstance(v, str):
            report(name, "missing value (null)" if v is None else
                   f"must be text, got {json_type(v)}")
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
            report(name, f"must be text, got {json_type(v)}")
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
                       f"got {json_type(v)}")
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
        report("meta", f"must be an object, got {json_type(v)}")
        ok = False
    ok = _reference_ok(row, report, tabular) and ok
    # Fields the schema does not know are kept, not dropped: they may be someone's labels.
    for k, val in row.items():
        if k not in _KNOWN_FIELDS and k not in typos and not (tabular and val in ("", None)):
            meta.setdefault(k, val)

    if not ok:
        return None
    return Example(id=text["id"], query=text["query"], answer=text["answer"],
                   category=optional["category"], tags=tags, source=optional["source"],
                   meta=meta)



def _reference_ok(row: dict[str, Any], report: Callable[[str | None, str], None],
                  tabular: bool) -> bool:
    """A `reference`, when the row has one, is non-empty text (in a table an empty cell is a
    row without a reference, not an empty one)."""
    v = row.get(REFERENCE_FIELD)
    if REFERENCE_FIELD not in row or (tabular and v in ("", None)):
        return True
    why = reference_problem(v)
    if why:
        report(REFERENCE_FIELD, why.removeprefix(f"field '{REFERENCE_FIELD}' "))
    return why is None


def read_text(path: Path) -> str:
    """A whole text file as UTF-8 (a byte-order mark dropped); anything else is a `PoolError`."""
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PoolError(f"{path}: not valid UTF-8 (byte {exc.start + 1})") from None


