"""`icl-search propose preambles|restyle|run|report`: proposed contexts, step by step or in
rounds (icl_search.propose)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from icl_search.cli import app

propose_app = typer.Typer(help="An LM proposes preambles and restyles examples; the study "
                          "searches over them in rounds.", no_args_is_help=True)
app.add_typer(propose_app, name="propose")
err = Console(stderr=True)
SPEC_HELP = ("Proposer (overrides \\[propose] spec): self, dspy:<provider>/<model>\\[@api_base], "
             "openai:URL or vllm:NAME_OR_PATH.")


def _say(m: str) -> None:
    err.print(m, highlight=False, markup=False)


def _setup(config: Path, spec: str | None):
    """Config, proposer section, pool, search queries, leak guard, and (for `self`) the
    base model, loaded once."""
    from icl_search.pool import Pool
    from icl_search.study import load_config
    from icl_search.study.config import ProposeSection
    from icl_search.study.splits import load_splits

    cfg = load_config(config)
    p = cfg.propose or ProposeSection()
    if spec:
        p = ProposeSection.model_validate(p.model_dump() | {"spec": spec})
    pool = Pool.load(cfg.path(cfg.pool.path))
    queries = load_splits(cfg, check=False).search
    return cfg, p, pool, queries


def _proposer(cfg, p):
    from icl_search.cache import Cache
    from icl_search.propose import make_proposer

    cache = Cache(cfg.path(cfg.cache)) if cfg.cache else Cache()
    engine = None
    if p.spec == "self":
        from icl_search.engines import CachedEngine, make_engine

        _say(f"loading the base model ({cfg.model.engine}) ...")
        m = cfg.model
        engine = CachedEngine(make_engine(m.engine, max_model_len=m.max_model_len,
                                          kv_cache_memory_bytes=m.kv_cache_memory_bytes,
                                          gpu_memory_utilization=m.gpu_memory_utilization),
                              cache)
    return make_proposer(p.spec, engine=engine, cache=cache, api_key_env=p.api_key_env,
                         max_model_len=cfg.model.max_model_len), engine


def _estimate_fit(cfg):
    """Without the base model loaded: ~3 characters a token against `model.max_model_len`."""
    window = cfg.model.max_model_len or 2048

    def why(text: str) -> str | None:
        need = len(text) // 3 + 1 + cfg.decoding.max_tokens + 100
        return f"~{need} tokens > window {window}" if need > window else None
    return why


@propose_app.command("preambles")
def preambles(
    config: Path = typer.Argument(..., help="Study config (TOML); its study so far is the "
                                  "proposer's input."),
    n: int | None = typer.Option(None, "--n", min=1, help="Preambles to ask for "
                                    "(default \\[propose] per_round)."),
    spec: str | None = typer.Option(None, help=SPEC_HELP),
    out: Path | None = typer.Option(None, "--out", "-o", help="Folder for the preamble files "
                                       "and proposals.json (default: "
                                       "<artifacts>/proposals/manual)."),
) -> None:
    """Write new preambles from the best/worst preambles, the pool and the failures so far."""
    from icl_search.prompt import Template
    from icl_search.propose import PreambleCheck, propose_preambles
    from icl_search.propose.preambles import brief_from_studies
    from icl_search.propose.rounds import context_fit, existing_rounds, guard_for, proposals_dir

    cfg, p, pool, queries = _setup(config, spec)
    done = existing_rounds(cfg)
    if not done:
        _say(f"no study {cfg.name} in the storage yet: proposing from the config's preambles "
             "alone (no scores, no failures)")
    proposer, engine = _proposer(cfg, p)
    template = Template.from_dict(cfg.template)
    fits = context_fit(engine, template, cfg.decoding.max_tokens) if engine else _estimate_fit(cfg)
    brief = brief_from_studies(done, pool, queries)
    if not brief.scored:
        from icl_search.propose.preambles import Scored
        from icl_search.study.space import system_choices

        brief.scored = [Scored(k, v.read_text(encoding="utf-8"), 0.0, 0)
                        for k, v in system_choices(cfg).items()]
    folder = out or proposals_dir(cfg) / "manual"
    res = propose_preambles(brief, proposer, PreambleCheck(guard_for(cfg), template, p.max_chars,
                                                           fits),
                            n=n or p.per_round, round_=len(done), out_dir=folder, progress=True)
    t = Table("file", "focus", "status")
    for a in res.accepted:
        t.add_row(a.path, a.focus, "accepted")
    for x in res.rejected:
        t.add_row("-", x["focus"], f"rejected: {x['reason']}")
    Console().print(t)
    _say(f"{len(res.accepted)} accepted, {len(res.rejected)} rejected; wrote "
         f"{folder / 'proposals.json'}")


@propose_app.command("restyle")
def restyle(
    config: Path = typer.Argument(..., help="Study config (TOML): its pool is restyled."),
    spec: str | None = typer.Option(None, help=SPEC_HELP),
    out: Path | None = typer.Option(None, "--out", "-o", help="The new pool version (default: "
                                       "<artifacts>/proposals/pool.restyled.jsonl)."),
    limit: int | None = typer.Option(None, min=1, help="Restyle only the first N examples."),
    embed_check: bool = typer.Option(True, help="Also require embedder cosine to the "
                                     "original >= \\[propose] min_cosine."),
) -> None:
    """Rewrite the pool's answers in the URIAL style; the checked ones join a new pool file."""
    from icl_search.prompt import Template
    from icl_search.propose import RestyleCheck, restyle_pool
    from icl_search.propose.restyle import report_path
    from icl_search.propose.rounds import guard_for, proposals_dir
    from icl_search.study.splits import embedder_for

    cfg, p, pool, _ = _setup(config, spec)
    proposer, _ = _proposer(cfg, p)
    check = RestyleCheck(guard_for(cfg), Template.from_dict(cfg.template),
                         embed=embedder_for(cfg) if embed_check else None,
                         min_cosine=p.min_cosine, min_recall=p.min_recall)
    path = out or proposals_dir(cfg) / "pool.restyled.jsonl"
    ids = pool.ids[:limit] if limit else None
    res = restyle_pool(pool, proposer, check, out_path=path, progress=True, ids=ids)
    for x in res.rejected:
        _say(f"rejected {x['id']}: {x['reason']}")
    _say(f"{len(res.accepted)} restyled, {len(res.rejected)} rejected; wrote {path} "
         f"({len(res.pool)} examples) and {report_path(path)}")


@propose_app.command("run")
def run(
    config: Path = typer.Argument(..., help="Study config (TOML) with a \\[propose] section."),
    rounds: int | None = typer.Option(None, min=0, help="Rounds after round 0 "
                                         "(default \\[propose] rounds)."),
) -> None:
    """Run, resume or join the study in rounds: round 0 is the config's space; each later
    round adds its proposals, holds the earlier rounds' finished trials as copies (outside its
    optuna.n_trials budget) and is seeded with the best configurations so far under each new
    preamble."""
    from icl_search.propose import run_rounds
    from icl_search.study import load_config

    cfg = load_config(config)
    s = run_rounds(cfg, say=_say, rounds=rounds)
    _report(cfg, s.rounds)


@propose_app.command("report")
def report(config: Path = typer.Argument(..., help="Study config (TOML).")) -> None:
    """Per round: own and copied trials, best score, best preamble and the round that
    proposed it; per preamble: origin, parents, trials, best score, rounds won."""
    from icl_search.study import load_config

    _report(load_config(config))


def _report(cfg, _rounds=None) -> None:
    from icl_search.propose.tables import proposals_table, rounds_table

    def origin(r):
        return "config" if not r else f"round {r}"

    t = Table("round", "study", "own trials", "copied", "proposals", "best", "best preamble",
              "proposed in", title="rounds (a round holds the earlier rounds' trials as copies)")
    for r in rounds_table(cfg):
        t.add_row(str(r["round"]), r["study"], str(r["trials"]), str(r["copied"]),
                  str(r["proposals"]), "-" if r["best"] is None else f"{r['best']:.3f}",
                  str(r["system"] or "-"), origin(r["proposed_in"]))
    Console().print(t)
    t = Table("preamble", "proposed in", "parents", "trials", "best", "best of round",
              title="preambles")
    for p in proposals_table(cfg):
        t.add_row(p["name"], origin(p["proposed_in"]), ", ".join(p["parents"]) or "-",
                  str(p["trials"]), "-" if p["best"] is None else f"{p['best']:.3f}",
                  ", ".join(map(str, p["won"])) or "-")
    Console().print(t)
