"""Unblinding: verdicts + key -> the left side's win rate per comparison, with a Wilson 95%
interval, per category (regular / safety), and how often raters agree on shared pairs.

People are pooled: a pair read by several people counts once, at the mean of their verdicts
(left wins 1, tie 1/2, right wins 0), so shared pairs do not weigh double; the interval is
Wilson's on that sum of values over the pairs read (ties as half a success, as in
`icl_search.feedback.pairwise`). Each LLM rater (`llm:SPEC`) is scored on its own.
"""

from __future__ import annotations

from collections import defaultdict
from itertools import combinations
from pathlib import Path
from typing import Any

from icl_search.feedback.pairwise import wilson_interval
from icl_search.review.folder import LLM_PREFIX, ReviewError, ReviewFolder
from icl_search.review.verdicts import Verdict, read_all

PEOPLE = "people"


def _value(v: Verdict, key: dict[str, Any]) -> float:
    """1 when the left side of the comparison won, 0 when the right side did, 1/2 for a tie."""
    if v.verdict == "tie":
        return 0.5
    side = key["x"] if v.verdict == "X" else key["y"]
    return 1.0 if side == key["left"] else 0.0


def _stats(values: list[float], verdicts: list[float]) -> dict[str, Any]:
    n = len(values)
    s = sum(values)
    lo, hi = wilson_interval(s, n)
    return {"pairs": n, "verdicts": len(verdicts),
            "left_wins": sum(x == 1.0 for x in verdicts),
            "right_wins": sum(x == 0.0 for x in verdicts),
            "ties": sum(x == 0.5 for x in verdicts),
            "win_rate": s / n if n else None, "ci95": [lo, hi] if n else None}


def _group(rater: str) -> str:
    return rater if rater.startswith(LLM_PREFIX) else PEOPLE


def _comparison_rows(verdicts: list[Verdict], key: dict[str, Any]) -> list[dict[str, Any]]:
    pairs_key = key["pairs"]
    # (comparison, group) -> pair -> values of its verdicts
    cells: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for v in verdicts:
        k = pairs_key.get(v.pair)
        if k is None:
            raise ReviewError(f"pair {v.pair!r} (rater {v.rater}) is not in the review's key")
        cells[(k["comparison"], _group(v.rater))][v.pair].append(_value(v, k))
    rows = []
    for comp in key["comparisons"]:
        groups = sorted({g for c, g in cells if c == comp["name"]}, key=lambda g: (g != PEOPLE, g))
        for g in groups:
            per_pair = cells[(comp["name"], g)]
            row = {"comparison": comp["name"], "left": comp["left"], "right": comp["right"],
                   "raters": g, "identical_skipped": comp["identical"]}
            row.update(_stats([sum(x) / len(x) for x in per_pair.values()],
                              [x for xs in per_pair.values() for x in xs]))
            row["by_category"] = {}
            for cat in ("regular", "safety"):
                sub = {p: xs for p, xs in per_pair.items() if pairs_key[p]["category"] == cat}
                if sub:
                    row["by_category"][cat] = _stats([sum(x) / len(x) for x in sub.values()],
                                                     [x for xs in sub.values() for x in xs])
            rows.append(row)
    return rows


def agreement(verdicts: list[Verdict]) -> dict[str, Any]:
    """Exact agreement (X / Y / tie alike) for every two raters on the pairs both read, and
    pooled over every two people."""
    by_rater: dict[str, dict[str, str]] = defaultdict(dict)
    for v in verdicts:
        by_rater[v.rater][v.pair] = v.verdict
    pairs_out = []
    agree_people = n_people = 0
    shared_people: set[str] = set()
    for a, b in combinations(sorted(by_rater), 2):
        common = set(by_rater[a]) & set(by_rater[b])
        if not common:
            continue
        same = sum(by_rater[a][p] == by_rater[b][p] for p in common)
        pairs_out.append({"raters": [a, b], "pairs": len(common), "agree": same,
                          "share": same / len(common)})
        if _group(a) == PEOPLE and _group(b) == PEOPLE:
            agree_people += same
            n_people += len(common)
            shared_people |= common
    return {"people": {"pairs": len(shared_people), "comparisons": n_people,
                       "agree": agree_people,
                       "share": agree_people / n_people if n_people else None},
            "raters": pairs_out}


def score_review(folder: str | Path) -> dict[str, Any]:
    """The review's score (see the module docstring), as a JSON-ready dict."""
    rf = ReviewFolder(folder)
    verdicts = read_all(rf.path, rf.pairs)
    key = rf.key()
    counts: dict[str, int] = defaultdict(int)
    for v in verdicts:
        counts[v.rater] += 1
    return {"folder": str(rf.path), "pairs": len(rf.pairs),
            "identical_skipped": rf.manifest.get("identical_skipped", 0),
            "raters": dict(sorted(counts.items())),
            "comparisons": _comparison_rows(verdicts, key),
            "agreement": agreement(verdicts)}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _ci(s: dict[str, Any]) -> str:
    return "-" if not s.get("ci95") else f"[{_pct(s['ci95'][0])}, {_pct(s['ci95'][1])}]"


def score_lines(score: dict[str, Any]) -> list[str]:
    """The score as Markdown: one table row per comparison and rater group, then agreement."""
    lines = ["| comparison | raters | pairs | left wins | right wins | ties | left win rate "
             "(ties 1/2) | 95% Wilson | regular | safety |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in score["comparisons"]:
        cats = [f"{_pct(c['win_rate'])} (n={c['pairs']})" if (c := r["by_category"].get(k))
                else "-" for k in ("regular", "safety")]
        lines.append(f"| {r['left']} vs {r['right']} | {r['raters']} | {r['pairs']} | "
                     f"{r['left_wins']} | {r['right_wins']} | {r['ties']} | "
                     f"{_pct(r['win_rate'])} | {_ci(r)} | {cats[0]} | {cats[1]} |")
    if not score["comparisons"]:
        lines.append("| (no verdicts yet) | | | | | | | | | |")
    ag = score["agreement"]
    p = ag["people"]
    lines += ["", f"Identical answers skipped: {score['identical_skipped']}. Verdicts per rater: "
              + (", ".join(f"{k} {v}" for k, v in score["raters"].items()) or "none") + "."]
    if p["comparisons"]:
        lines.append(f"Agreement between people on shared pairs: {p['agree']} of "
                     f"{p['comparisons']} ({_pct(p['share'])}) over {p['pairs']} pairs.")
    for a in ag["raters"]:
        lines.append(f"- {a['raters'][0]} / {a['raters'][1]}: {a['agree']} of {a['pairs']} "
                     f"({_pct(a['share'])})")
    return lines


def report_lines(folder: str | Path) -> list[str]:
    """The blind review section of `study report` (`--review DIR`)."""
    return ["", "## Blind review", "", f"Review folder `{folder}`.", "",
            *score_lines(score_review(folder))]
