"""Agreement of a judge with a reference judge (just-eval's GPT-4 judgements by default).

Reference file: JSONL rows `{"id", "generator", "scores": {aspect: 1-5 | "N/A"}}`, with the
judged text either inline (`output` or `response`) or found by (generator, id) in an outputs
folder of JSONL files (`{"id", "generator", "output"}`, one file per system); the query and
category come from the row (`query`/`instruction`, `category`) or an instructions file
(`{"id", "instruction", "category"}`). That is the layout of just-eval's release
(`judgements/reference.dev.jsonl`, `outputs/*.dev.jsonl`, `instructions.dev.jsonl`).

Figures per aspect: Spearman and Kendall (tau-b) correlations and mean absolute error over the
items both judges scored, next to the error of always answering the reference's median (a
judge must beat that to carry information); and, where several systems answered the same
queries, pairwise agreement: for each pair of systems, does our judge prefer the one the
reference prefers, by system mean and item by item.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from icl_search.errors import IclSearchError
from icl_search.io import read_jsonl_objects
from icl_search.judge.parsing import coerce_score
from icl_search.judge.result import JudgeItem, JudgeResult, count_words, length_controlled
from icl_search.judge.rubric import ALL_ASPECTS


class ReferenceFileError(IclSearchError, ValueError):
    """The reference judgements cannot be read; the message names file, line and field."""


@dataclass(frozen=True)
class ReferenceRow:
    id: str
    system: str
    reference_judge: str
    scores: dict[str, float | None]
    query: str
    response: str
    category: str

    @property
    def key(self) -> str:
        return f"{self.system}/{self.id}"


def system_name(generator: str) -> str:
    """just-eval's generator labels -> a system name: 'just_results_aligned//gpt-4-0613.json'
    and 'Yi-6B-Chat.p=1.0.t=0.0' become 'gpt-4-0613' and 'Yi-6B-Chat'."""
    name = generator.rsplit("/", 1)[-1]
    name = re.sub(r"\.json$", "", name)
    name = re.sub(r"\.p=[\d.]+\.t=[\d.]+$", "", name)
    return name


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    return list(read_jsonl_objects(path, ReferenceFileError))


def _outputs_index(folder: Path) -> dict[tuple[str, str], str]:
    index: dict[tuple[str, str], str] = {}
    for f in sorted(folder.glob("*.jsonl")):
        for lineno, row in _read_jsonl(f):
            if "id" not in row or "output" not in row:
                raise ReferenceFileError(f"{f}:{lineno}: an outputs row needs 'id' and 'output'")
            names = {system_name(str(row.get("generator", ""))),
                     re.sub(r"\.dev$", "", f.stem)} - {""}
            for name in names:
                index.setdefault((name, str(row["id"])), row["output"] or "")
    return index


def load_reference(path: str | Path, *, outputs: str | Path | None = None,
                   instructions: str | Path | None = None) -> list[ReferenceRow]:
    """Reference rows joined with their query and response.

    `outputs` and `instructions` default to just-eval's layout beside the reference file
    (`../outputs/`, `../instructions.dev.jsonl`). Rows whose response cannot be found are an
    error naming the first one."""
    path = Path(path)
    raw = _read_jsonl(path)
    if not raw:
        raise ReferenceFileError(f"{path}: no reference rows")
    root = path.parent.parent
    outputs = Path(outputs) if outputs else root / "outputs"
    instructions = Path(instructions) if instructions else root / "instructions.dev.jsonl"
    queries: dict[str, tuple[str, str]] = {}
    if instructions.exists():
        for lineno, row in _read_jsonl(instructions):
            if "id" not in row or "instruction" not in row:
                raise ReferenceFileError(f"{instructions}:{lineno}: an instructions row needs "
                                     "'id' and 'instruction'")
            queries[str(row["id"])] = (row["instruction"], row.get("category") or "regular")
    needs_outputs = any("output" not in r and "response" not in r for _, r in raw)
    index = _outputs_index(outputs) if needs_outputs and outputs.is_dir() else {}
    rows = []
    for lineno, r in raw:
        where = f"{path}:{lineno}"
        for name in ("id", "generator", "scores"):
            if name not in r:
                raise ReferenceFileError(f"{where}: field {name!r} is missing")
        if not isinstance(r["scores"], dict) or not r["scores"]:
            raise ReferenceFileError(f"{where}: field 'scores' must be a non-empty object")
        rid, system = str(r["id"]), system_name(str(r["generator"]))
        scores: dict[str, float | None] = {}
        for aspect, value in r["scores"].items():
            if aspect not in ALL_ASPECTS:
                raise ReferenceFileError(f"{where}: scores.{aspect}: unknown aspect; accepted: "
                                     f"{', '.join(ALL_ASPECTS)}")
            scores[aspect], _ = coerce_score(value)
        query = r.get("query") or r.get("instruction")
        category = r.get("category")
        if query is None and rid in queries:
            query, category = queries[rid][0], category or queries[rid][1]
        if query is None:
            raise ReferenceFileError(f"{where}: no query for id {rid}: the row has no 'query' and "
                                 f"{instructions} {'has no such id' if queries else 'is absent'}")
        response = r.get("output", r.get("response"))
        if response is None:
            response = index.get((system, rid))
        if response is None:
            raise ReferenceFileError(f"{where}: no response for system {system!r} id {rid}: the row "
                                 f"has no 'output' and {outputs} has no matching file/row")
        category = category or ("safety" if "safety" in scores else "regular")
        rows.append(ReferenceRow(rid, system, str(r.get("judge", "reference")), scores,
                                 query, response, category))
    return rows


def select(rows: Sequence[ReferenceRow], *, limit: int | None = None,
           systems: Sequence[str] | None = None, discriminating: bool = False,
           categories: Sequence[str] | None = None) -> list[ReferenceRow]:
    """At most `limit` query ids per category, spread evenly over the sorted ids (so a small
    subset still spans the source datasets), with every system's rows for those ids.

    `discriminating` keeps, where several systems answered a query, only the queries on which
    the reference scored them differently: just-eval's safety reference gives 5 to 94% of the
    answers, so a plain subset of it often has nothing to rank."""
    if systems:
        known = {r.system for r in rows}
        unknown = [s for s in systems if s not in known]
        if unknown:
            raise ReferenceFileError(f"unknown system(s) {unknown}; the reference has: "
                                 f"{', '.join(sorted(known))}")
        rows = [r for r in rows if r.system in set(systems)]
    if categories:
        rows = [r for r in rows if r.category in set(categories)]
    if discriminating:
        seen: dict[str, dict[str, set]] = defaultdict(lambda: defaultdict(set))
        for r in rows:
            for aspect, v in r.scores.items():
                seen[r.id][aspect].add(v)
        systems_per_id = Counter(r.id for r in rows)
        rows = [r for r in rows if systems_per_id[r.id] < 2
                or any(len(vs - {None}) > 1 for vs in seen[r.id].values())]
    if limit is None:
        return list(rows)
    if limit < 1:
        raise ValueError(f"limit={limit}: expected an integer >= 1")
    keep: set[tuple[str, str]] = set()
    for category in sorted({r.category for r in rows}):
        ids = sorted({r.id for r in rows if r.category == category}, key=_id_order)
        picks = np.unique(np.linspace(0, len(ids) - 1, min(limit, len(ids))).round().astype(int))
        keep.update((category, ids[i]) for i in picks)
    return [r for r in rows if (r.category, r.id) in keep]


def _id_order(x: str) -> tuple[int, str]:
    return (int(x), "") if x.isdigit() else (1 << 62, x)


def items_for(rows: Sequence[ReferenceRow]) -> list[JudgeItem]:
    seen: dict[str, JudgeItem] = {}
    for r in rows:
        seen.setdefault(r.key, JudgeItem(r.key, r.query, r.response, r.category))
    return list(seen.values())


@dataclass
class Calibration:
    judge: str
    aspects: list[dict[str, Any]] = field(default_factory=list)
    systems: list[dict[str, Any]] = field(default_factory=list)
    items: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"judge": self.judge, "items": self.items, "aspects": self.aspects,
                "systems": self.systems}


def _finite(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def compare(result: JudgeResult, rows: Sequence[ReferenceRow]) -> Calibration:
    """Agreement figures between `result` (items keyed `system/id`) and the reference rows."""
    from scipy.stats import kendalltau, spearmanr

    ours = {it.id: it.scores for it in result.items}
    cal = Calibration(result.judge_id, items=len(result.items))
    lc = _length_controlled_by_system(result, rows)
    for aspect in ALL_ASPECTS:
        graded = [r for r in rows if r.scores.get(aspect) is not None]
        if not graded:
            continue
        pairs = [(ours[r.key].get(aspect), r.scores[aspect], r) for r in graded
                 if r.key in ours]
        both = [(o, ref, r) for o, ref, r in pairs if o is not None]
        o = np.array([p[0] for p in both], dtype=float)
        ref = np.array([p[1] for p in both], dtype=float)
        entry: dict[str, Any] = {
            "aspect": aspect, "reference_judges": sorted({r.reference_judge for r in graded}),
            "n": len(both), "reference_items": len(graded),
            "coverage": len(both) / len(graded),
            "spearman": None, "spearman_p": None, "kendall": None, "kendall_p": None,
            "mae": None, "mae_median_baseline": None, "mean_ours": None, "mean_reference": None,
            "systems": len({r.system for r in graded}),
        }
        if len(both) >= 1:
            entry.update(mae=float(np.abs(o - ref).mean()), mean_ours=float(o.mean()),
                         mean_reference=float(ref.mean()),
                         mae_median_baseline=float(np.abs(np.median(ref) - ref).mean()))
        if len(both) >= 3 and np.ptp(o) > 0 and np.ptp(ref) > 0:
            rho = spearmanr(o, ref)
            tau = kendalltau(o, ref)
            entry.update(spearman=_finite(rho.statistic), spearman_p=_finite(rho.pvalue),
                         kendall=_finite(tau.statistic), kendall_p=_finite(tau.pvalue))
        entry.update(_pairwise(both))
        cal.aspects.append(entry)
        if entry["systems"] >= 2:
            cal.systems.extend(_system_means(aspect, both, lc))
    return cal


def _pairwise(both: list[tuple[float, float, ReferenceRow]]) -> dict[str, Any]:
    """System-pair agreement, by system mean and per query (our ties count half)."""
    by_system: dict[str, list[tuple[float, float]]] = defaultdict(list)
    by_query: dict[str, dict[str, tuple[float, float]]] = defaultdict(dict)
    for o, ref, r in both:
        by_system[r.system].append((o, ref))
        by_query[r.id][r.system] = (o, ref)
    out: dict[str, Any] = {"system_pairs": None, "system_pair_agreement": None,
                           "item_pairs": None, "item_pair_agreement": None}
    if len(by_system) < 2:
        return out
    means = {s: (np.mean([v[0] for v in vs]), np.mean([v[1] for v in vs]))
             for s, vs in by_system.items()}
    agree = total = 0.0
    for a, b in combinations(sorted(means), 2):
        dref = means[a][1] - means[b][1]
        if dref == 0:
            continue
        dours = means[a][0] - means[b][0]
        total += 1
        agree += 1.0 if np.sign(dours) == np.sign(dref) else (0.5 if dours == 0 else 0.0)
    out.update(system_pairs=int(total), system_pair_agreement=agree / total if total else None)
    agree = total = 0.0
    for per_system in by_query.values():
        for a, b in combinations(sorted(per_system), 2):
            dref = per_system[a][1] - per_system[b][1]
            if dref == 0:
                continue
            dours = per_system[a][0] - per_system[b][0]
            total += 1
            agree += 1.0 if np.sign(dours) == np.sign(dref) else (0.5 if dours == 0 else 0.0)
    out.update(item_pairs=int(total), item_pair_agreement=agree / total if total else None)
    return out


def _length_controlled_by_system(result: JudgeResult, rows: Sequence[ReferenceRow]):
    system_of = {r.key: r.system for r in rows}
    split: dict[str, list] = defaultdict(list)
    for it in result.items:
        if it.id in system_of:
            # Items are keyed system/id; the bare id lets the fit share query effects.
            split[system_of[it.id]].append(replace(it, id=it.id.split("/", 1)[-1]))
    if len(split) < 2:
        return {}
    return length_controlled({s: JudgeResult(its, result.judge_id) for s, its in split.items()})


def _system_means(aspect: str, both, lc) -> list[dict[str, Any]]:
    by_system: dict[str, list[tuple[float, float, ReferenceRow]]] = defaultdict(list)
    for o, ref, r in both:
        by_system[r.system].append((o, ref, r))
    out = []
    for s, v in sorted(by_system.items()):
        out.append({"aspect": aspect, "system": s, "n": len(v),
                    "mean_ours": float(np.mean([x[0] for x in v])),
                    "mean_ours_length_controlled": lc[s].aspect_means.get(aspect)
                    if s in lc else None,
                    "mean_reference": float(np.mean([x[1] for x in v])),
                    "mean_words": float(np.mean([count_words(x[2].response) for x in v]))})
    return out


def calibrate(judge, rows: Sequence[ReferenceRow], *, progress: bool = False
              ) -> tuple[Calibration, JudgeResult]:
    """Judge every (system, id) of the reference rows once and compare."""
    result = judge.score(items_for(rows), progress=progress)
    return compare(result, rows), result

