"""`make_review`: answer sets of several contexts -> a blind review folder.

Pairs are made within a query id, for each comparison `A:B` asked for; the sides are shuffled
into X and Y and the key is written apart (`key.json`). Identical answers are skipped and
counted. With several readers, `overlap` pairs go on every sheet (to measure agreement) and
the rest are dealt out evenly.

    make_review({"bundle": rows_a, "inst_1k": rows_b}, ["bundle:inst_1k"], "runs/review",
                readers=3, overlap=15, seed=0)
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from icl_search.io import atomic_folder, read_jsonl_objects, write_json, write_jsonl
from icl_search.review.folder import (
    FORMAT_VERSION,
    KEY,
    MANIFEST,
    PAIRS,
    SHEETS,
    VERDICTS_GLOB,
    Pair,
    ReviewError,
)


@dataclass(frozen=True)
class AnswerRow:
    id: str
    query: str
    answer: str | None
    category: str
    where: str  # file:line, or "NAME row N" for rows given in memory


def category_of(raw: Any) -> str:
    """regular | safety: a score splits the pairs by these two."""
    return "safety" if str(raw or "").strip().lower() == "safety" else "regular"


def load_answers(path: str | Path) -> list[dict[str, Any]]:
    """The rows of an answer file as `generate` writes it (JSONL: id, query, answer), with
    every problem named by file and line."""
    path = Path(path)
    rows = []
    for lineno, row in read_jsonl_objects(path, ReviewError, "answer file"):
        rows.append({**row, "_where": f"{path}:{lineno}"})
    if not rows:
        raise ReviewError(f"{path}: no answers in file")
    return rows


def _check_rows(name: str, rows: Sequence[Mapping[str, Any]],
                categories: Mapping[str, str]) -> dict[str, AnswerRow]:
    out: dict[str, AnswerRow] = {}
    for i, row in enumerate(rows, 1):
        where = str(row.get("_where") or f"answers {name!r} row {i}")
        if not isinstance(row, Mapping):
            raise ReviewError(f"{where}: expected an object with id, query, answer")
        for f in ("id", "query"):
            if f not in row or row[f] is None or str(row[f]).strip() == "":
                raise ReviewError(f"{where}: missing field {f!r}")
        if not isinstance(row["query"], str):
            raise ReviewError(f"{where}: field 'query' must be text")
        if "answer" not in row:
            raise ReviewError(f"{where}: missing field 'answer'")
        if row["answer"] is not None and not isinstance(row["answer"], str):
            raise ReviewError(f"{where}: field 'answer' must be text or null")
        qid = str(row["id"])
        if qid in out:
            raise ReviewError(f"{where}: duplicate id {qid!r} (first at {out[qid].where})")
        cat = row.get("category", categories.get(qid))
        out[qid] = AnswerRow(qid, row["query"], row["answer"], category_of(cat), where)
    return out


def parse_compare(spec: str, names: Sequence[str]) -> tuple[str, str]:
    left, sep, right = spec.partition(":")
    if not sep or not left or not right or left == right:
        raise ReviewError(f"--compare {spec!r}: expected A:B, two different answer names")
    for n in (left, right):
        if n not in names:
            raise ReviewError(f"--compare {spec!r}: no answers named {n!r} (given: "
                              f"{', '.join(names)})")
    return left, right


def _names(pair: Sequence[str], names: Sequence[str]) -> tuple[str, str]:
    """A comparison given as (A, B), for names that may hold ':' (a study's "urial:inst_1k")."""
    if len(pair) != 2 or pair[0] == pair[1] or any(n not in names for n in pair):
        raise ReviewError(f"comparison {tuple(pair)!r}: expected two different answer names "
                          f"among {', '.join(names)}")
    return pair[0], pair[1]


@dataclass
class ReviewSummary:
    """What `make_review` wrote: counts per comparison and per sheet."""

    folder: Path
    pairs: int
    sheets: list[int]
    comparisons: list[dict[str, Any]] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"{self.folder}: {self.pairs} pairs on {len(self.sheets)} sheet(s) of "
               f"{', '.join(map(str, self.sheets))} pairs"]
        for c in self.comparisons:
            out.append(f"  {c['name']}: {c['pairs']} pairs, {c['identical']} identical "
                       f"answers skipped, {c['missing']} queries without two answers")
        sides = [n for c in self.comparisons for n in (c["left"], c["right"])]
        shared = sorted({n for n in sides if sides.count(n) > 1})
        if shared:
            out.append(f"note: {', '.join(shared)} is in more than one comparison: a reader who "
                       "gets two pairs of one query can tell its answer (the one in both); "
                       "give such comparisons to different readers, or review them apart")
        return out


def _pairs_of(left: str, right: str, a: dict[str, AnswerRow], b: dict[str, AnswerRow],
              rng: random.Random) -> tuple[list[tuple[dict, dict]], dict[str, Any]]:
    made, identical, missing = [], 0, 0
    for qid in sorted(set(a) | set(b)):
        ra, rb = a.get(qid), b.get(qid)
        if ra is None or rb is None or ra.answer is None or rb.answer is None:
            missing += 1
            continue
        if ra.query.strip() != rb.query.strip():
            raise ReviewError(f"id {qid!r}: the query differs between {ra.where} and "
                              f"{rb.where}: are these answers to the same query set?")
        if ra.answer.strip() == rb.answer.strip():
            identical += 1
            continue
        flip = rng.random() < 0.5
        x, y = (rb, ra) if flip else (ra, rb)
        shown = {"query": ra.query, "x": x.answer, "y": y.answer}
        key = {"comparison": f"{left}:{right}", "left": left, "right": right,
               "x": right if flip else left, "y": left if flip else right,
               "query_id": qid, "category": ra.category if ra.category == "safety"
               else rb.category}
        made.append((shown, key))
    stats = {"name": f"{left}:{right}", "left": left, "right": right, "pairs": len(made),
             "identical": identical, "missing": missing}
    return made, stats


def deal_sheets(pair_ids: Sequence[str], readers: int, overlap: int,
                rng: random.Random) -> list[list[str]]:
    """Sheets for `readers`: `overlap` pairs on every sheet, the rest dealt out in turn; each
    sheet in its own shuffled order."""
    ids = list(pair_ids)
    rng.shuffle(ids)
    shared, rest = ids[:overlap], ids[overlap:]
    sheets = [list(shared) + rest[r::readers] for r in range(readers)]
    for s in sheets:
        rng.shuffle(s)
    return sheets


def check_target(out: str | Path, force: bool = False) -> None:
    """Raise `ReviewError` unless `out` may receive a new review folder (call it before long
    work that ends in `make_review`)."""
    out = Path(out)
    if not out.exists():
        return
    if not out.is_dir():
        raise ReviewError(f"{out}: exists and is not a folder")
    if any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise ReviewError(f"{out}: exists, is not empty and is not a review folder: choose "
                          "another --out")
    rated = sorted(p.name for p in out.glob(VERDICTS_GLOB))
    if rated and not force:
        raise ReviewError(f"{out}: a review with verdicts ({', '.join(rated)}): refusing to "
                          "overwrite it (give --force to replace it, verdicts included)")


def make_review(answers: Mapping[str, Sequence[Mapping[str, Any]]],
                compares: Sequence[str | tuple[str, str]], out: str | Path, *,
                readers: int = 1, overlap: int = 0, seed: int = 0,
                categories: Mapping[str, str] | None = None,
                force: bool = False) -> ReviewSummary:
    """Write a blind review folder at `out` from answer rows per context name (rows as
    `generate` writes them: id, query, answer, optional category; `categories` maps query
    id -> category for rows without one). Everything is checked before anything is written,
    and the folder appears whole or not at all."""
    out = Path(out)
    if readers < 1:
        raise ReviewError(f"--readers {readers}: must be at least 1")
    if overlap < 0 or (overlap and readers < 2):
        raise ReviewError(f"--overlap {overlap}: shared pairs need --readers 2 or more "
                          "(and overlap >= 0)")
    names = list(answers)
    pairs_asked = [parse_compare(c, names) if isinstance(c, str) else _names(c, names)
                   for c in compares]
    if not pairs_asked:
        raise ReviewError("no --compare given: name at least one A:B")
    checked = {n: _check_rows(n, rows, categories or {}) for n, rows in answers.items()}
    check_target(out, force)
    rng = random.Random(seed)
    made, stats = [], []
    for left, right in pairs_asked:
        m, s = _pairs_of(left, right, checked[left], checked[right], rng)
        made += m
        stats.append(s)
    if not made:
        raise ReviewError("no pair to review: every query lacks an answer on one side or the "
                          "two answers are identical")
    if overlap > len(made):
        raise ReviewError(f"--overlap {overlap}: only {len(made)} pairs were made")
    rng.shuffle(made)  # pair ids in an order that says nothing about the comparison
    width = len(str(len(made)))
    pairs = [Pair(f"p{i:0{width}d}", **shown) for i, (shown, _) in enumerate(made, 1)]
    key = {p.pair: k for p, (_, k) in zip(pairs, made, strict=True)}
    sheets = deal_sheets([p.pair for p in pairs], readers, overlap, rng)
    by_id = {p.pair: p for p in pairs}
    manifest = {"version": FORMAT_VERSION, "pairs": len(pairs), "overlap": overlap,
                "identical_skipped": sum(s["identical"] for s in stats),
                "sheets": [{"sheet": i, "pairs": len(s)} for i, s in enumerate(sheets, 1)]}
    with atomic_folder(out) as tmp:
        write_jsonl(tmp / PAIRS, (p.to_dict() for p in pairs))
        for i, s in enumerate(sheets, 1):
            write_jsonl(tmp / SHEETS / f"sheet-{i}.jsonl", (by_id[pid].to_dict() for pid in s))
        write_json(tmp / KEY, {"version": FORMAT_VERSION, "seed": seed, "comparisons": stats,
                               "shared": _shared(sheets),
                               "pairs": key})
        write_json(tmp / MANIFEST, manifest)
    return ReviewSummary(out, len(pairs), [len(s) for s in sheets], stats)


def _shared(sheets: list[list[str]]) -> list[str]:
    common = set(sheets[0]).intersection(*map(set, sheets[1:])) if len(sheets) > 1 else set()
    return sorted(common)


def make_review_from_files(files: Mapping[str, str | Path], compares: Sequence[str],
                           out: str | Path, *, queries: str | Path | None = None,
                           **opts: Any) -> ReviewSummary:
    """`make_review` on answer files (NAME -> path); `queries` (a query file) gives the
    category of answer rows that carry none."""
    categories: dict[str, str] = {}
    if queries is not None:
        from icl_search.evalset import QueryFileError, load_queries

        try:
            categories = {q.id: q.category for q in load_queries(queries)}
        except QueryFileError as exc:
            raise ReviewError(str(exc)) from None
    answers = {name: load_answers(path) for name, path in files.items()}
    return make_review(answers, compares, out, categories=categories, **opts)
