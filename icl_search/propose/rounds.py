"""Search in rounds: round 0 is the config's own space; each later round adds the proposals
written from the rounds before it and is searched by a new Optuna study in the same storage.

Why a study per round: Optuna refuses a categorical whose choices change within a study, so
each round's space (its preamble choices, its pool) is fixed for its whole life, and TPE stays
valid inside it. Round `r > 0` is the study `<name>.r<r>`; its user attrs `propose` link it to
its parent round and hold its proposals (texts included), so workers on another machine
(PostgreSQL) rebuild the same files from the storage instead of proposing again. The
proposing step runs under the study's ask lock: one worker proposes, the others find it done.

Each later round starts from what is known: the earlier rounds' finished trials are copied into
its study (`icl_search.propose.history`: with their scores and attrs, once, under the ask lock,
resumable), and they are not part of the round's trial budget: every round runs
`optuna.n_trials` trials of its own. The round is also seeded (enqueued) with the `top` best
configurations so far under each new preamble. A configuration evaluated before costs
nothing, as the generation and judge caches answer it. Rounds persist and resume like a study:
a round whose trial budget is spent runs no trial, stored proposals are not asked again. All
rounds keep their trial artifacts in the config's one artifact folder, so a copy's artifact id
resolves from any round. Only the last round runs the confirmation stage: it holds the whole
search's trials, so it confirms the best configurations of every round.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from icl_search.propose.checks import LeakGuard, PreambleCheck, RestyleCheck
from icl_search.propose.history import (
    COPIED_ATTR,
    SOURCE,
    history_trials,
    is_copy,
    original_trials,
    source_key,
)
from icl_search.propose.preambles import MANIFEST, brief_from_studies, propose_preambles
from icl_search.propose.proposer import make_proposer
from icl_search.propose.restyle import restyle_pool
from icl_search.proposer_spec import ProposeError

ATTR = "propose"


def round_name(cfg, r: int) -> str:
    return cfg.name if r == 0 else f"{cfg.name}.r{r}"


def proposals_dir(cfg) -> Path:
    return cfg.artifacts_path / "proposals"


def guard_for(cfg) -> LeakGuard:
    """Every search and confirm query of the study: no proposal may copy one."""
    from icl_search.study.splits import load_splits

    s = load_splits(cfg, check=False)
    return LeakGuard([(q.id, q.query) for q in (*s.search, *s.confirm)])


def context_fit(engine, template, max_tokens: int) -> Callable[[str], str | None]:
    """A preamble must leave room for one example-free query and the answer budget."""
    def why(text: str) -> str | None:
        need = engine.count_tokens(template.render(text, [], "x" * 200)) + max_tokens
        if need > engine.context_window:
            return f"{need} tokens with the answer budget > window {engine.context_window}"
        return None
    return why


def round_config(cfg, r: int, preambles: list[str], pool_path: str | None,
                 seeds: list[dict[str, Any]], last: bool):
    # a later round enqueues only its seeds: the config's enqueued references (and the
    # baseline) are among the trials copied in from round 0 (`carry_history`)
    search = cfg.search.model_copy(update={
        "system_prompts": [*cfg.search.system_prompts, *preambles],
        "enqueue": seeds if r > 0 else list(cfg.search.enqueue)})
    # one artifact folder for every round: a copied trial's artifact id resolves from each
    update: dict[str, Any] = {"name": round_name(cfg, r), "search": search,
                              "artifacts_dir": str(cfg.artifacts_path)}
    if pool_path:
        update["pool"] = cfg.pool.model_copy(update={"path": pool_path, "index_dir": None})
    if not last:
        update["eval"] = cfg.eval.model_copy(update={"confirm_after_run": False})
    return cfg.model_copy(update=update)


def seeds_for(done: list[tuple[Any, Any]], new_names: list[str], top: int) -> list[dict]:
    """Under each new preamble, the `top` best distinct configurations so far. The earlier
    trials themselves are not enqueued again: they are copied into the round
    (`carry_history`)."""
    trials = sorted(original_trials(s for _, s in done), key=lambda t: -t.values[0])
    out: list[dict] = []
    for name in new_names:  # a small round budget must still try each new preamble
        kept = 0
        for t in trials:
            if kept >= top:
                break
            params = dict(t.params) | {"system": name}
            if params not in out:
                out.append(params)
                kept += 1
    return out


def _export_pool(study) -> tuple[Any, Any]:
    from icl_search.study.export import EXPORT_ATTR

    info = study.user_attrs.get(EXPORT_ATTR) or {}
    return info.get("pool_path"), info.get("index_dir")


def carry_history(study, cfg_r, candidates: list[str], earlier: list[Any], url: str,
                  say: Callable[[str], None] = print) -> int:
    """Copy the `earlier` round studies' finished trials into the round's `study`, once: under
    the ask lock, so of several workers one copies; a copy step killed half-way is finished on
    resume without copying a trial twice. Returns how many copies the study holds."""
    from icl_search.study.space import baseline_params
    from icl_search.study.storage import ask_lock

    if COPIED_ATTR in study.user_attrs:
        return study.user_attrs[COPIED_ATTR]
    with ask_lock(study, url):
        if COPIED_ATTR in study.user_attrs:  # another worker copied meanwhile
            return study.user_attrs[COPIED_ATTR]
        have = {source_key(t.user_attrs[SOURCE]) for t in study.get_trials(deepcopy=False)
                if is_copy(t)}
        pool = (str(cfg_r.path(cfg_r.pool.path).resolve()),
                str(cfg_r.path(cfg_r.pool.index_dir).resolve()) if cfg_r.pool.index_dir
                else None)
        new, skipped = history_trials(earlier, cfg_r, candidates,
                                      same_pool=lambda s: _export_pool(s) == pool,
                                      baseline=baseline_params(cfg_r, candidates), have=have)
        study.add_trials(new)
        n = len(have) + len(new)
        study.set_user_attr(COPIED_ATTR, n)
    left = ", ".join(f"{v} ({k})" for k, v in skipped.items() if v)
    say(f"round study {study.study_name}: {n} earlier trial(s) copied in (not in its budget)"
        + (f"; left out: {left}" if left else ""))
    return n


@dataclass
class RoundsSummary:
    rounds: list[dict[str, Any]] = field(default_factory=list)


def _store_round(study, cfg, r: int, build: Callable[[], dict[str, Any]], url: str
                 ) -> dict[str, Any]:
    from icl_search.study.storage import ask_lock

    if ATTR in study.user_attrs:
        return study.user_attrs[ATTR]
    with ask_lock(study, url):
        fresh = study.user_attrs  # another worker may have proposed meanwhile
        if ATTR in fresh:
            return fresh[ATTR]
        info = build()
        study.set_user_attr(ATTR, info)
        return info


def _materialise(info: dict[str, Any], folder: Path) -> tuple[list[str], str | None]:
    """Write the round's files from the stored attrs where they are missing (another
    machine's worker, or a file lost); returns (preamble paths, restyled pool path)."""
    from icl_search.io import atomic_write, write_jsonl

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for p in info["proposals"]["accepted"]:
        path = folder / p["name"]
        text = info["texts"][p["name"]]
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            with atomic_write(path) as fh:
                fh.write(text)
        paths.append(str(path))
    pool = None
    if info.get("pool_rows"):
        pool = folder / "pool.restyled.jsonl"
        if not pool.exists():
            write_jsonl(pool, info["pool_rows"])
        pool = str(pool)
    from icl_search.io import write_json

    if not (folder / MANIFEST).exists():
        write_json(folder / MANIFEST, info["proposals"])
    return paths, pool


def run_rounds(cfg, *, engine=None, judge=None, say: Callable[[str], None] = print,
               rounds: int | None = None, progress: bool = True) -> RoundsSummary:
    """Run (or resume, or join) every round of the config's `[propose]` section."""
    from icl_search.pool.schema import row_of
    from icl_search.prompt import Template
    from icl_search.study import build_evaluator, open_study, run_study

    p = cfg.propose
    if p is None:
        raise ProposeError(f"{cfg.source}: no [propose] section: add one with spec, rounds, "
                           "per_round (and restyle = true to restyle the pool)")
    n_rounds = p.rounds if rounds is None else rounds
    url = cfg.storage_url
    summary = RoundsSummary()
    done: list[tuple[Any, Any]] = []
    preambles: list[str] = []
    pool_path: str | None = None
    proposer = ev = None
    template = Template.from_dict(cfg.template)
    for r in range(n_rounds + 1):
        last = r == n_rounds
        if r > 0:
            folder = proposals_dir(cfg) / f"round-{r}"
            study = open_study(cfg.model_copy(update={"name": round_name(cfg, r)}), url)

            def build(r=r, folder=folder, ev=ev) -> dict[str, Any]:
                nonlocal proposer
                if proposer is None:
                    say(f"proposer: {p.spec}")
                    proposer = make_proposer(p.spec, engine=ev.engine, cache=ev_cache(ev),
                                             api_key_env=p.api_key_env,
                                             max_model_len=cfg.model.max_model_len)
                guard = guard_for(cfg)
                brief = brief_from_studies(done, ev.pool, ev.queries)
                check = PreambleCheck(guard, template, p.max_chars,
                                      context_fit(ev.engine, template, cfg.decoding.max_tokens))
                res = propose_preambles(brief, proposer, check, n=p.per_round, round_=r,
                                        out_dir=folder, progress=progress)
                info: dict[str, Any] = {
                    "round": r, "parent": round_name(cfg, r - 1), "proposals": res.to_dict(),
                    "texts": {a.name: Path(a.path).read_text(encoding="utf-8")
                              for a in res.accepted}}
                if p.restyle and r == 1:
                    rs = restyle_pool(ev.pool, proposer, RestyleCheck(guard, template,
                                      embed=_embedder(cfg), min_cosine=p.min_cosine,
                                      min_recall=p.min_recall),
                                      out_path=folder / "pool.restyled.jsonl", round_=r,
                                      progress=progress)
                    info["pool_rows"] = [row_of(e) for e in rs.pool]
                    info["restyle"] = rs.to_dict()
                for line in _describe(info):
                    say(line)
                return info

            info = _store_round(study, cfg, r, build, url)
            new, pool_new = _materialise(info, folder)
            preambles += new
            pool_path = pool_new or pool_path
            seeds = seeds_for(done, [Path(x).name for x in new], p.top)
        else:
            seeds = []
        cfg_r = round_config(cfg, r, preambles, pool_path, seeds, last)
        ev = build_evaluator(cfg_r, engine=engine, judge=judge, say=say)
        engine = getattr(ev.engine, "engine", ev.engine)  # the raw engine: one load per run
        judge = ev.judge
        say(f"round {r}: study {cfg_r.name}, {len(cfg_r.search.system_prompts)} preambles, "
            f"{len(ev.pool)} pool examples")
        study_r = open_study(cfg_r, url)
        copied = 0
        if r > 0:
            copied = carry_history(study_r, cfg_r, cfg_r.search.fixed_candidates or ev.pool.ids,
                                   [s for _, s in done], url, say=say)
        s = run_study(cfg_r, ev, storage_url=url, progress=say,
                      n_trials=cfg_r.optuna.n_trials + copied)
        if r == 0:
            study_r.set_user_attr("propose_rounds", n_rounds)
        done.append((cfg_r, study_r))
        summary.rounds.append({"round": r, "study": cfg_r.name, "finished": s.finished,
                               "pruned": s.pruned, "failed": s.failed, "copied": copied,
                               "best": best_of(study_r)})
    return summary


def ev_cache(ev):
    return getattr(ev.engine, "cache", None)


def _embedder(cfg):
    from icl_search.study.splits import embedder_for

    return embedder_for(cfg)


def best_of(study) -> dict[str, Any] | None:
    try:
        t = study.best_trials[0] if len(study.directions) > 1 else study.best_trial
    except ValueError:
        return None
    return {"number": t.number, "value": t.values[0], "system": t.params.get("system"),
            "params": t.params}


def _describe(info: dict[str, Any]) -> list[str]:
    pr = info["proposals"]
    lines = [(f"round {info['round']}: {pr['counts']['accepted']} preamble(s) accepted, "
              f"{pr['counts']['rejected']} rejected")]
    lines += [f"  rejected ({x['focus']}): {x['reason']}" for x in pr["rejected"]]
    if "restyle" in info:
        c = info["restyle"]["counts"]
        lines.append(f"  restyle: {c['accepted']} accepted, {c['rejected']} rejected")
    return lines


def existing_rounds(cfg) -> list[tuple[Any, Any]]:
    """(round config, study) of every round already in the storage, in order."""
    import optuna

    from icl_search.study.storage import make_storage

    storage = make_storage(cfg)
    names = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    out, preambles, pool = [], [], None
    r = 0
    while round_name(cfg, r) in names:
        study = optuna.load_study(study_name=round_name(cfg, r), storage=storage)
        if r > 0 and ATTR in study.user_attrs:
            new, pool_new = _materialise(study.user_attrs[ATTR], proposals_dir(cfg) / f"round-{r}")
            preambles += new
            pool = pool_new or pool
        out.append((round_config(cfg, r, preambles, pool, [], True), study))
        r += 1
    return out


__all__ = ["best_of", "round_config", "round_name", "run_rounds", "seeds_for"]
