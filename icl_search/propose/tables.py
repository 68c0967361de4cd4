"""What the rounds found, as tables: per round (its study, trials, best and where the best
preamble came from) and per preamble (the round that proposed it, its parents, its trials and
best score, the rounds it won). `propose report` prints them; `study report` adds them to the
study's report (`report_lines`)."""

from __future__ import annotations

from typing import Any


def _round_studies(cfg) -> list[Any]:
    """The storage's studies of the config's rounds, round 0 first."""
    import optuna

    from icl_search.propose.rounds import round_name
    from icl_search.study.storage import make_storage

    storage = make_storage(cfg)
    names = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    out = []
    while round_name(cfg, len(out)) in names:
        out.append(optuna.load_study(study_name=round_name(cfg, len(out)), storage=storage))
    return out


def _accepted(study) -> list[dict[str, Any]]:
    from icl_search.propose.rounds import ATTR

    return study.user_attrs.get(ATTR, {}).get("proposals", {}).get("accepted", [])


def rounds_table(cfg, studies: list[Any] | None = None) -> list[dict[str, Any]]:
    """Per round: its study, its own and copied trials, its best trial (copies included: the
    best so far), and where that trial's preamble came from (the round that proposed it, or 0
    for the config's own)."""
    from icl_search.propose.history import is_copy
    from icl_search.propose.rounds import best_of

    studies = _round_studies(cfg) if studies is None else studies
    origin: dict[str, int] = {}
    rows = []
    for r, study in enumerate(studies):
        for a in _accepted(study):
            origin[a["name"]] = r
        best = best_of(study)
        system = best["system"] if best else None
        trials = study.get_trials(deepcopy=False)
        copied = sum(is_copy(t) for t in trials)
        rows.append({"round": r, "study": study.study_name, "trials": len(trials) - copied,
                     "copied": copied, "best": best["value"] if best else None,
                     "best_trial": best["number"] if best else None, "system": system,
                     "proposed_in": origin.get(system, 0) if system else None,
                     "proposals": len(_accepted(study))})
    return rows


def proposals_table(cfg, studies: list[Any] | None = None) -> list[dict[str, Any]]:
    """Per preamble (the config's, then each round's proposals): where it came from, its
    trials over all rounds (copies not counted twice), its best score, and the rounds whose
    best trial used it (`won`)."""
    from icl_search.propose.history import original_trials
    from icl_search.study.space import system_choices

    studies = _round_studies(cfg) if studies is None else studies
    rows: dict[str, dict[str, Any]] = {
        n: {"name": n, "proposed_in": 0, "parents": [], "trials": 0, "best": None, "won": []}
        for n in system_choices(cfg)}
    for r, study in enumerate(studies):
        for a in _accepted(study):
            rows[a["name"]] = {"name": a["name"], "proposed_in": r, "parents": a["parents"],
                               "trials": 0, "best": None, "won": []}
    for t in original_trials(studies):
        row = rows.get((t.user_attrs.get("spec") or {}).get("system_name", ""))
        if row is not None:
            row["trials"] += 1
            row["best"] = t.values[0] if row["best"] is None else max(row["best"], t.values[0])
    for r in rounds_table(cfg, studies):
        if r["system"] in rows:
            rows[r["system"]]["won"].append(r["round"])
    return list(rows.values())


def report_lines(cfg) -> list[str]:
    """The study report's section on proposed contexts (Markdown lines); empty when the
    study has no later rounds."""
    studies = _round_studies(cfg)
    if len(studies) < 2:
        return []
    rounds = rounds_table(cfg, studies)
    props = proposals_table(cfg, studies)
    last = rounds[-1]

    def f(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}"

    def origin(r: int | None) -> str:
        return "config" if not r else f"round {r}"

    lines = ["", "## Proposed contexts (search in rounds)", "",
             f"The search went on in {len(rounds) - 1} round(s) of proposals after this study "
             f"(`icl-search propose report` prints the same tables). Each round's study holds "
             f"the earlier rounds' trials as copies, so its best is the best so far.", "",
             "| round | study | own trials | copied | proposals | best | best preamble | "
             "proposed in |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['round']} | `{r['study']}` | {r['trials']} | {r['copied']} | "
              f"{r['proposals']} | {f(r['best'])} | `{r['system'] or '-'}` | "
              f"{origin(r['proposed_in'])} |" for r in rounds]
    lines += ["", "| preamble | proposed in | parents | trials | best score | best of round |",
              "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| `{p['name']}` | {origin(p['proposed_in'])} | "
              f"{', '.join(p['parents']) or '-'} | {p['trials']} | {f(p['best'])} | "
              f"{', '.join(map(str, p['won'])) or '-'} |" for p in props]
    if last["system"] is not None:
        from icl_search.study.confirm import summarize
        from icl_search.study.storage import redact

        lines += ["", f"Best search score of the whole search: study `{last['study']}` trial "
                  f"{last['best_trial']} ({f(last['best'])}), preamble `{last['system']}` "
                  f"({origin(last['proposed_in'])})."]
        summary = summarize(studies[-1])  # the last round confirms the whole search's best
        if summary is not None and summary.best is not None:
            lines.append(f"Confirmation on `{last['study']}`: {summary.sentence()}")
        lines.append(f"Export from that study: `icl-search export {last['study']} --storage "
                     f"{redact(cfg.storage_url)} -o bundle.json`.")
    return lines
