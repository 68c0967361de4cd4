"""Reference preference data for learned judges: AlpacaEval's GPT-4-turbo annotations and
just-eval's safety judgements, read as *groups* (all judged answers to one query), with the
within-query pairs and the length-matched subset every judge figure is computed on.

Layout (the public releases; `data_dir()` finds the folder)::

    alpaca-eval/instructions.dev.jsonl        {id, instruction, dataset, reference_output}
    alpaca-eval/annotations/MODEL.dev.jsonl   {id, generator, output, preference in [1, 2]}
    alpaca-eval/lc_winrate.json               {"lc_winrate": {generator: percent}}
    just-eval/instructions.dev.jsonl          {id, instruction, category}
    just-eval/judgements/reference.dev.jsonl  safety scores 1-5 on ids 800-999 (13 systems)
    just-eval/outputs/*.dev.jsonl             the judged outputs

A pair (a, b) of answers to one query is *length-matched* when their lengths (words) are
within 1.25x of each other and GPT-4-turbo's preferences differ by at least 0.3: on those,
"always prefer the longer answer" is near chance, so agreement there measures quality, not
length. Held-out queries are drawn by `split_ids` (a seeded draw over sorted ids), so every
figure is on queries a judge never trained on.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from icl_search.errors import IclSearchError
from icl_search.io import read_jsonl_objects
from icl_search.judge.result import count_words

DATA_ENV = "ICL_SEARCH_DATA"
NULL_MODEL = "NullModel"
#: The length-matched subset: lengths within this ratio, preferences at least this far apart.
MATCH_RATIO, MATCH_MARGIN = 1.25, 0.3
ALPACA_FILES = ("alpaca-eval/instructions.dev.jsonl", "alpaca-eval/annotations/",
                "alpaca-eval/lc_winrate.json")
JUST_EVAL_FILES = ("just-eval/instructions.dev.jsonl", "just-eval/judgements/reference.dev.jsonl",
                   "just-eval/outputs/")
SAFETY_IDS = range(800, 1000)


class DataError(IclSearchError):
    """The reference data folder is missing or a file in it is unusable; names the file."""


def data_dir(path: str | os.PathLike | None = None) -> Path:
    """The reference data folder: `path`, else $ICL_SEARCH_DATA, else `../shared/data` beside
    the repository (where the project keeps the public releases)."""
    if path:
        return Path(path).expanduser()
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    return Path(__file__).resolve().parents[3] / "shared" / "data"


def require_files(root: Path, files: Sequence[str] = ALPACA_FILES + JUST_EVAL_FILES) -> None:
    """One message naming every missing file, the public repositories and where they go."""
    missing = [f for f in files if not (root / f).exists()]
    if missing:
        raise DataError(
            f"reference data folder {root}: missing {', '.join(missing)}. The learned judge "
            "trains on two public releases: AlpacaEval (github.com/tatsu-lab/alpaca_eval: the "
            "dev instructions, the GPT-4-turbo annotations of each model as "
            "annotations/MODEL.dev.jsonl, lc_winrate.json) under alpaca-eval/, and just-eval "
            "(github.com/Re-Align/just-eval: instructions.dev.jsonl, judgements/"
            "reference.dev.jsonl, outputs/*.dev.jsonl) under just-eval/. Point "
            f"--data or ${DATA_ENV} at the folder holding both.")


@dataclass(frozen=True)
class Answer:
    system: str
    text: str
    preference: float  # the reference judge's verdict: higher is better
    words: int


@dataclass(frozen=True)
class Group:
    """Every judged answer to one query (`kind`: "alpaca" preference or "safety" score)."""

    id: str
    query: str
    kind: str
    answers: tuple[Answer, ...]
    reference: str | None = None  # AlpacaEval's `reference_output`, the answer judged against


def _answer(system: str, text: str, pref: float) -> Answer:
    return Answer(system, text, float(pref), count_words(text))


def load_alpaca(root: str | os.PathLike | None = None) -> list[Group]:
    """AlpacaEval groups: one per instruction, the annotated models' answers with their
    preference (1 = the reference answer is better, 2 = this answer is better), and the
    reference answer they were judged against."""
    root = data_dir(root)
    require_files(root, ALPACA_FILES)
    base = root / "alpaca-eval"
    queries: dict[str, str] = {}
    references: dict[str, str | None] = {}
    for lineno, row in read_jsonl_objects(base / "instructions.dev.jsonl", DataError):
        if "id" not in row or "instruction" not in row:
            raise DataError(f"{base / 'instructions.dev.jsonl'}:{lineno}: needs 'id' and "
                            "'instruction'")
        queries[str(row["id"])] = str(row["instruction"])
        ref = row.get("reference_output")
        references[str(row["id"])] = ref if isinstance(ref, str) and ref.strip() else None
    answers: dict[str, list[Answer]] = {}
    files = sorted((base / "annotations").glob("*.jsonl"))
    if not files:
        raise DataError(f"{base / 'annotations'}: no MODEL.dev.jsonl files")
    for f in files:
        for lineno, row in read_jsonl_objects(f, DataError):
            pref = row.get("preference")
            if row.get("id") is None or not isinstance(row.get("output"), str) or pref is None:
                continue  # an unannotated output carries nothing to learn or measure
            if not isinstance(pref, (int, float)) or not 1.0 <= float(pref) <= 2.0:
                raise DataError(f"{f}:{lineno}: preference {pref!r} is not a number in [1, 2]")
            ident = str(row["id"])
            if ident not in queries:
                raise DataError(f"{f}:{lineno}: id {ident} is not in instructions.dev.jsonl")
            system = str(row.get("generator") or f.name.removesuffix(".dev.jsonl"))
            answers.setdefault(ident, []).append(_answer(system, row["output"], pref))
    return [Group(i, queries[i], "alpaca", tuple(a), references[i]) for i, a in sorted(
        answers.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else kv[0])]


def load_lc_winrate(root: str | os.PathLike | None = None) -> dict[str, float]:
    path = data_dir(root) / "alpaca-eval" / "lc_winrate.json"
    try:
        blob = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg})") from None
    table = blob.get("lc_winrate") if isinstance(blob, dict) else None
    if not isinstance(table, dict):
        raise DataError(f"{path}: field 'lc_winrate' ({{generator: percent}}) is missing")
    return {str(k): float(v) for k, v in table.items()}


def load_safety(root: str | os.PathLike | None = None) -> list[Group]:
    """just-eval safety groups (ids 800-999): each system's answer with its 1-5 safety score."""
    from icl_search.judge.calibration import ReferenceFileError, load_reference

    root = data_dir(root)
    require_files(root, JUST_EVAL_FILES)
    try:
        rows = load_reference(root / "just-eval" / "judgements" / "reference.dev.jsonl")
    except ReferenceFileError as e:
        raise DataError(str(e)) from None
    groups: dict[str, tuple[str, list[Answer]]] = {}
    for r in rows:
        s = r.scores.get("safety")
        if r.category == "safety" and s is not None:
            groups.setdefault(r.id, (r.query, []))[1].append(_answer(r.system, r.response, s))
    return [Group(i, q, "safety", tuple(a)) for i, (q, a) in sorted(
        groups.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else kv[0])]


def split_ids(ids: Iterable[str], test_fraction: float = 0.25, seed: int = 0
              ) -> tuple[set[str], set[str]]:
    """(train ids, held-out ids): a seeded draw over the sorted ids, the same every run."""
    ids = sorted(set(ids))
    rng = random.Random(seed)
    rng.shuffle(ids)
    n = round(len(ids) * test_fraction)
    return set(ids[n:]), set(ids[:n])


@dataclass(frozen=True)
class Pair:
    """Answers `a` and `b` of group `gid`; `a` is the one the reference judge prefers."""

    gid: str
    a: int
    b: int
    margin: float
    matched: bool


#: How an answer's length is counted for the length-matched subset.
LENGTH_UNITS = ("words", "chars")


def within_query_pairs(groups: Sequence[Group], *, min_margin: float = MATCH_MARGIN,
                       skip_systems: Iterable[str] = (NULL_MODEL,), by: str = "words"
                       ) -> list[Pair]:
    """Every pair of answers to one query whose reference preferences differ by at least
    `min_margin` (0.3, as for the length-matched subset: "longer" agrees on ~0.82 of these
    and ~0.58 of the matched ones); `matched` marks the length-matched subset, lengths
    counted `by` words (as `judge calibrate` counts) or characters."""
    if by not in LENGTH_UNITS:
        raise ValueError(f"by={by!r}: expected one of {', '.join(LENGTH_UNITS)}")
    skip = set(skip_systems)
    out = []
    for g in groups:
        idx = [i for i, a in enumerate(g.answers) if a.system not in skip]
        for x, i in enumerate(idx):
            for j in idx[x + 1:]:
                ai, aj = g.answers[i], g.answers[j]
                d = ai.preference - aj.preference
                if d == 0 or abs(d) < min_margin:  # a near-tie says nothing
                    continue
                hi, lo = (i, j) if d > 0 else (j, i)
                wa, wb = (max(ai.words, 1), max(aj.words, 1)) if by == "words" else \
                    (max(len(ai.text), 1), max(len(aj.text), 1))
                matched = max(wa, wb) / min(wa, wb) <= MATCH_RATIO and abs(d) >= MATCH_MARGIN
                out.append(Pair(g.id, hi, lo, abs(d), matched))
    return out


def pair_agreement(groups: Sequence[Group], scores: dict[str, np.ndarray],
                   pairs: Sequence[Pair]) -> float | None:
    """Share of pairs where the judge's scores order the answers as the reference does
    (ties count half); `scores[gid][i]` scores answer i of group gid."""
    if not pairs:
        return None
    hits = 0.0
    for p in pairs:
        sa, sb = scores[p.gid][p.a], scores[p.gid][p.b]
        hits += 1.0 if sa > sb else 0.5 if sa == sb else 0.0
    return hits / len(pairs)


def longer_scores(groups: Sequence[Group]) -> dict[str, np.ndarray]:
    """The "always prefer the longer answer" rule as scores."""
    return {g.id: np.array([a.words for a in g.answers], dtype=float) for g in groups}
