"""Building a study's `Evaluator` from its config: pool (optionally restricted to some sources,
with an index of its own), the search split of the eval set, preambles, the cached engine, the
judge (sharing the engine when it is the same model), the feedback sources and the screen."""

from __future__ import annotations

import os

from icl_search.study.config import StudyConfig
from icl_search.study.evaluate import Evaluator
from icl_search.study.space import TrialSpec, baseline_params, system_choices
from icl_search.study.storage import StudyError


def build_evaluator(cfg: StudyConfig, *, engine=None, judge=None, say=print) -> Evaluator:
    """Load pool, eval set, engine (cached) and judge as the config says.

    >>> cfg = load_config("studies/demo.toml")
    >>> ev = build_evaluator(cfg, say=lambda m: None)   # or engine=/judge= already loaded
    """
    from icl_search.cache import Cache
    from icl_search.engines import CachedEngine, SamplingParams, make_engine
    from icl_search.judge import make_judge
    from icl_search.pool import Pool
    from icl_search.prompt import Template
    from icl_search.study.screening import make_screen, resolve_spec
    from icl_search.study.splits import embedder_for, load_splits

    pool = Pool.load(cfg.path(cfg.pool.path))
    index_dir = cfg.path(cfg.pool.index_dir)
    if cfg.pool.sources:
        pool, index_dir = _restrict_sources(cfg, pool, index_dir)
    # the search split only: the confirm set stays unseen (icl_search.study.splits)
    queries = load_splits(cfg, embed=embedder_for(cfg) if cfg.eval.has_confirm else None).search
    systems = {name: p.read_text(encoding="utf-8") for name, p in system_choices(cfg).items()}
    cache = Cache(cfg.path(cfg.cache)) if cfg.cache else Cache()
    if engine is None:
        m = cfg.model
        api_key = os.environ.get(m.api_key_env) if m.api_key_env else None
        say(f"loading the base model ({m.engine}) ...")
        engine = make_engine(m.engine, max_model_len=m.max_model_len,
                             kv_cache_memory_bytes=m.kv_cache_memory_bytes,
                             gpu_memory_utilization=m.gpu_memory_utilization, api_key=api_key,
                             engine_args=m.engine_args)
    raw_engine = engine
    engine = CachedEngine(engine, cache)
    if judge is None:
        say(f"loading the judge ({cfg.judge.spec}) ...")
        same = _same_model(cfg.judge.spec, cfg.model.engine)
        opts = {"max_model_len": cfg.judge.max_model_len} if cfg.judge.max_model_len else {}
        judge = make_judge(resolve_spec(cfg, cfg.judge.spec), engine=raw_engine if same else None,
                           cache=cache,
                           rubric=cfg.path(cfg.judge.rubric),
                           safety_rubric=cfg.path(cfg.judge.safety_rubric), **opts)
    d = cfg.decoding
    params = SamplingParams(max_tokens=d.max_tokens, temperature=d.temperature, top_p=d.top_p,
                            repetition_penalty=d.repetition_penalty, seed=d.seed)
    needs_index = any(s != "fixed" for s in cfg.search.strategies) and cfg.search.k[1] > 0
    template = Template.from_dict(cfg.template)
    feedback = baseline = None
    if cfg.feedback is not None:
        from icl_search.feedback import feedback_from_config

        say("loading the feedback sources ...")
        feedback = feedback_from_config(cfg.feedback, judge=judge, cache=cache,
                                        template=template, resolve=cfg.path)
        params_b = baseline_params(cfg, pool.ids)
        baseline = TrialSpec(params_b["system"], params_b["k"], params_b.get("strategy", "none"),
                             tuple(params_b[f"ex_{i}"] for i in range(params_b["k"])))
    evaluator = Evaluator(engine=engine, judge=judge, pool=pool, queries=queries,
                          systems=systems, params=params, template=template, index_dir=index_dir,
                          embedder=cfg.pool.embedder, needs_index=needs_index, feedback=feedback,
                          baseline=baseline, screen=make_screen(cfg, cache, say),
                          hygiene_floor=cfg.judge.hygiene_floor)
    return evaluator


def build_audit(cfg: StudyConfig, evaluator: Evaluator, *, say=print) -> list:
    """The `[judge] audit` judges (loaded only for the confirmation; never for a trial). A spec
    naming the study's generator model shares its engine, as the study's judge does."""
    from icl_search.cache import Cache
    from icl_search.judge import make_judge
    from icl_search.study.screening import resolve_spec

    judges = []
    for spec in cfg.judge.audit:
        say(f"loading the audit judge ({spec}) ...")
        same = _same_model(spec, cfg.model.engine)
        engine = getattr(evaluator.engine, "engine", None) if same else None
        judges.append(make_judge(resolve_spec(cfg, spec), engine=engine,
                                 cache=Cache(cfg.path(cfg.cache)) if cfg.cache else Cache()))
    return judges


def _restrict_sources(cfg: StudyConfig, pool, index_dir):
    """The pool's examples whose `source` is in `pool.sources`, with an index of their own
    (beside the full pool's, so neither goes stale when a study switches)."""
    from icl_search.index import PoolIndex
    from icl_search.pool import Pool

    keep = set(cfg.pool.sources or ())
    have = sorted({e.source for e in pool})
    sub = Pool([e for e in pool if e.source in keep], pool.path, pool.system)
    if not len(sub):
        raise StudyError(f"{cfg.source}: field 'pool.sources': no example of {pool.path} has "
                         f"a source in {sorted(keep)}; its sources: {have}")
    base = index_dir or PoolIndex.default_dir(pool.path)
    return sub, base.with_name(f"{base.name}-{'+'.join(sorted(keep))}")


def _same_model(judge_spec: str, engine_spec: str) -> bool:
    from icl_search.engines import parse_spec
    from icl_search.judge import parse_judge_spec

    try:
        kind, rest = parse_judge_spec(judge_spec)
    except Exception:  # noqa: BLE001  (an unparsable spec is no local judge here; make_judge names it)
        return False
    if kind not in ("logprob", "sample"):
        return False
    return parse_spec(rest)[:2] == parse_spec(engine_spec)[:2]
