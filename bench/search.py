"""Search-efficiency benchmark: trials TPE needs to reach 95% of the optimum of a synthetic
objective, against random search, median over seeds.

The search is the real one: the study config's space (`icl_search.study.suggest` over
`studies/demo.toml` by default: 3 preambles, k in [0, 3], fixed / kNN / MMR / hybrid, fixed-set
slots over the 97 pool ids, MMR lambda), the baseline trial enqueued first, trials asked
`optuna.batch_trials` at a time and told together, and the sampler from
`icl_search.study.space.make_sampler` (TPE with the study's settings) or
`optuna.samplers.RandomSampler`. Only generation + judging is replaced, by a simulator.

The simulator (a benchmark fixture, never a product judge) scores a trial on a judge-like
1-5 scale. Each instance draws hidden utilities once:

* every preamble: N(0, 0.25); every number of examples in the prompt (0..k_max): N(0, 0.25);
  every strategy: N(0, 0.25); every pool example: N(0, 0.5);
* MMR: a best lambda, uniform over the config's range, and a penalty 2 * (lambda - best)^2;
* retrieval: for every eval query, a hidden random order of the pool (kNN) and another (MMR):
  what those strategies retrieve for that query. Hybrid puts its anchors first, then the kNN
  order without the anchors.

The expected score of a trial on query q is 3 + u(preamble) + u(number of distinct examples) +
u(strategy) [+ MMR penalty] + the mean utility of the examples the prompt holds for q (k = 0:
3 + u(preamble) + u(0)). Repeated ids in fixed slots count once, as in the real prompt. The
objective the sampler sees is the mean over `--queries` queries of the expected score plus
Gaussian noise N(0, `--noise`) per query (the judge's per-answer noise), unclipped.

Because every term is additive, the optimum over the whole space is computed exactly (best
preamble; per strategy and k the best examples, anchors and lambda). A run "reaches 95%" at the
first trial whose noise-free score is >= 0.95 x the optimum; a run that does not within `--cap`
trials counts as `--cap` (censored; the table says how many). On this scale 95% of the optimum
is rare, so the cap is 1,000 rather than 300; a censored random run only makes the TPE/random
ratio an over-estimate (conservative), a censored TPE run would make it an under-estimate, so the
table shows both counts. To see past the cap, the share `p` of `--hit-sample` random
configurations (one fixed RandomSampler draw) that reach the target is measured per instance;
random search's median trials on that instance is then about ln 2 / p. Simulator instance `s`
and sampler seed `s` go together, so TPE and random face the same instances.
Trial counts are deterministic for given seeds; run time does not enter the figures.

    .venv/bin/python bench/search.py                         # TPE (study settings) vs random
    .venv/bin/python bench/search.py --tpe study,startup10   # also try other TPE settings
    .venv/bin/python bench/search.py --proposals             # rounds with proposals vs fixed
    .venv/bin/python bench/search.py --embedded --per-round 4  # the same on Gemma 270M, confirmed

Prints a table and writes `bench/results/search.json`.

`--proposals` compares search in rounds (icl_search.propose.rounds) against the fixed space
under an equal budget: by default of trials, as `study run` and `propose run` count them (a
configuration evaluated before is answered from a cache with its first noisy score and costs
nothing, but takes its trial); `--count paid` counts new configurations only. Rounds:
`--rounds` + 1 studies of `--round-trials` trials each; after each round the simulated
proposer writes `--per-round` preambles from the best preamble so far (the parent, by observed
score). A proposal's hidden utility is its parent's plus |N(0, `--proposal-sd`)| with
probability `--better-rate` (a better child), else minus |N(0, `--proposal-sd`)| (a worse
one). `rounds` is the product's design, built from its own functions: each round is a new
Optuna study over the grown space holding copies of the earlier rounds' finished trials
(`icl_search.propose.history.history_trials`, outside the round's budget), the baseline
enqueued only when no copy of it is there, seeded with `seeds_for` at the product's default
`top`. `rounds_fresh` is the design before the copies (each round's study starts empty, the
same seeds). Fixed: one study of (`--rounds` + 1) x `--round-trials` trials over the config's
space. Each arm reports, median over seeds, the noise-free score of the trial it would export
(the best observed score), the best noise-free score it evaluated, and the configurations it
paid for. Writes `bench/results/search_proposals.json`.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import optuna

from icl_search.io import write_json
from icl_search.pool import Pool
from icl_search.study import StudyConfig, load_config
from icl_search.study.space import TrialSpec, baseline_params, make_sampler, suggest, system_choices

RESULTS = ROOT / "bench" / "results" / "search.json"
BASE = 3.0
SD_SYSTEM, SD_K, SD_STRATEGY, SD_EXAMPLE = 0.25, 0.25, 0.25, 0.5
MMR_PENALTY = 2.0


class Simulator:
    """Hidden utilities of one instance; `true_score(spec)` is noise-free, `score` is not."""

    def __init__(self, cfg: StudyConfig, pool_ids: list[str], n_queries: int, noise: float,
                 seed: int):
        rng = np.random.default_rng(seed)
        s = cfg.search
        self.systems = list(system_choices(cfg))
        self.ids = list(pool_ids)
        self.k_max = s.k[1]
        self.anchors = s.anchors
        self.lam_range = s.mmr_lambda
        self.u_sys = dict(zip(self.systems, rng.normal(0, SD_SYSTEM, len(self.systems))))
        self.u_k = rng.normal(0, SD_K, self.k_max + 1)
        self.u_strat = dict(zip(s.strategies, rng.normal(0, SD_STRATEGY, len(s.strategies))))
        self.u_ex = dict(zip(self.ids, rng.normal(0, SD_EXAMPLE, len(self.ids))))
        self.best_lambda = float(rng.uniform(*self.lam_range))
        self.knn = [list(rng.permutation(self.ids)) for _ in range(n_queries)]
        self.mmr = [list(rng.permutation(self.ids)) for _ in range(n_queries)]
        self.n_queries = n_queries
        self.noise = noise
        self.rng = np.random.default_rng(seed + 10_000)

    def examples(self, spec: TrialSpec, q: int) -> list[str]:
        if spec.k == 0 or spec.strategy == "none":
            return []
        if spec.strategy == "fixed":
            return list(spec.fixed_ids)  # suggest already dropped repeated ids
        if spec.strategy in ("knn", "balanced"):
            return self.knn[q][:spec.k]
        if spec.strategy == "mmr":
            return self.mmr[q][:spec.k]
        anchors = list(spec.fixed_ids)
        return anchors + [i for i in self.knn[q] if i not in anchors][:spec.k - len(anchors)]

    def query_score(self, spec: TrialSpec, q: int) -> float:
        exs = self.examples(spec, q)
        v = BASE + self.u_sys[spec.system_name] + self.u_k[len(exs)]
        if exs:
            v += self.u_strat[spec.strategy] + float(np.mean([self.u_ex[i] for i in exs]))
        if spec.strategy == "mmr":
            v -= MMR_PENALTY * (spec.mmr_lambda - self.best_lambda) ** 2
        return v

    def true_score(self, spec: TrialSpec) -> float:
        return float(np.mean([self.query_score(spec, q) for q in range(self.n_queries)]))

    def score(self, spec: TrialSpec) -> float:
        return self.true_score(spec) + float(np.mean(self.rng.normal(0, self.noise,
                                                                     self.n_queries)))

    def optimum(self, strategies: list[str]) -> tuple[float, TrialSpec]:
        sys_best = max(self.systems, key=self.u_sys.get)
        cands = [TrialSpec(sys_best, 0, "none")]
        ranked = sorted(self.ids, key=self.u_ex.get, reverse=True)
        for k in range(1, self.k_max + 1):
            for st in strategies:
                if st == "fixed":
                    cands += [TrialSpec(sys_best, k, st, tuple(ranked[:m]))
                              for m in range(1, k + 1)]
                elif st == "mmr":
                    cands.append(TrialSpec(sys_best, k, st, (), self.best_lambda))
                elif st == "hybrid":
                    a = min(self.anchors, k)
                    if a == 1:
                        cands += [TrialSpec(sys_best, k, st, (i,)) for i in self.ids]
                    else:  # several anchors: the best `a` by utility (a close bound)
                        cands.append(TrialSpec(sys_best, k, st, tuple(ranked[:a])))
                else:
                    cands.append(TrialSpec(sys_best, k, st))
        best = max(cands, key=self.true_score)
        return self.true_score(best), best


def run_one(cfg: StudyConfig, sampler: optuna.samplers.BaseSampler, sim: Simulator,
            pool_ids: list[str], target: float, cap: int) -> dict:
    """Trials until the first one whose noise-free score reaches `target` (or `cap`)."""
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.enqueue_trial(baseline_params(cfg, pool_ids))
    batch = cfg.optuna.batch_trials
    best_true, n = -np.inf, 0
    t0 = time.perf_counter()
    while n < cap:
        trials = [study.ask() for _ in range(min(batch, cap - n))]
        specs = [suggest(t, cfg, pool_ids) for t in trials]
        reached = None
        for i, (t, spec) in enumerate(zip(trials, specs)):
            true = sim.true_score(spec)
            best_true = max(best_true, true)
            if reached is None and true >= target:
                reached = n + i + 1
            study.tell(t, sim.score(spec))
        n += len(trials)
        if reached is not None:
            return {"trials": reached, "reached": True, "best_true": best_true,
                    "seconds": time.perf_counter() - t0}
    return {"trials": cap, "reached": False, "best_true": best_true,
            "seconds": time.perf_counter() - t0}


def _loop(cfg, study, sim, pool_ids, budget, seen, evaluated, count="trials"):
    """Ask/tell in batches until `budget` trials were run (`count="trials"`, as `study run` and
    `propose run` count them) or `budget` new configurations were paid for (`count="paid"`).
    A configuration seen before is told its cached score and costs nothing but, counting
    trials, its trial. Counting paid ones, a run stops at 5 x `budget` trials (TPE can keep
    asking known configurations). Returns the trials run."""
    paid = asked = 0
    while (asked if count == "trials" else paid) < budget and asked < 5 * budget:
        left = budget - (asked if count == "trials" else paid)
        trials = [study.ask() for _ in range(min(cfg.optuna.batch_trials, left))]
        for t in trials:
            spec = suggest(t, cfg, pool_ids)
            key = (spec.system_name, spec.k, spec.strategy, spec.fixed_ids,
                   None if spec.mmr_lambda is None else round(spec.mmr_lambda, 6))
            if key not in seen:
                seen[key] = sim.score(spec)
                evaluated.append((seen[key], sim.true_score(spec), spec.system_name))
                paid += 1
            t.set_user_attr("spec", spec.to_dict())
            study.tell(t, seen[key])
        asked += len(trials)
    return asked


def run_fixed(cfg, sim, pool_ids, budget, count):
    study = optuna.create_study(direction="maximize", sampler=make_sampler(cfg))
    study.enqueue_trial(baseline_params(cfg, pool_ids), user_attrs={"role": "baseline"})
    evaluated: list = []
    trials = _loop(cfg, study, sim, pool_ids, budget, {}, evaluated, count)
    return _outcome(evaluated) | {"trials": trials}


def run_proposal_rounds(cfg, sim, pool_ids, rounds, per_round, round_trials, better_rate,
                        sd, seed, count, history=True):
    """Rounds as `propose run` does them (icl_search.propose.rounds): each round a new study
    over the grown space holding copies of the earlier rounds' finished trials
    (`history_trials`, not in the round's budget), the baseline enqueued only when no copy of
    it is there (`ensure_baseline`), seeded with `seeds_for` (the product's default `top`).
    `history=False` is the design before the copies: each round's study starts empty."""
    from icl_search.propose.history import history_trials
    from icl_search.propose.rounds import seeds_for
    from icl_search.study.config import ProposeSection

    top = ProposeSection().top
    rng = np.random.default_rng(seed + 50_000)
    seen: dict = {}
    evaluated: list = []
    done: list = []
    new_names: list[str] = []
    systems = list(cfg.search.system_prompts)
    better = worse = trials = copied = 0
    for r in range(rounds + 1):
        if r > 0:  # the proposer: children of the best preamble so far (by observed score)
            parent = max(evaluated, key=lambda e: e[0])[2]
            new_names = []
            for i in range(per_round):
                up = rng.random() < better_rate
                better, worse = better + up, worse + (not up)
                name = f"r{r}-p{i}.txt"
                sim.u_sys[name] = sim.u_sys[parent] + (1 if up else -1) * abs(rng.normal(0, sd))
                new_names.append(name)
            systems += new_names
        search = cfg.search.model_copy(update={"system_prompts": list(systems)})
        cfg_r = cfg.model_copy(update={"search": search})
        study = optuna.create_study(direction="maximize", sampler=make_sampler(cfg_r))
        base = baseline_params(cfg_r, pool_ids)
        if history and done:
            copies, _ = history_trials([s for _, s in done], cfg_r, pool_ids, baseline=base)
            study.add_trials(copies)
            copied += len(copies)
        if not any(t.user_attrs.get("role") == "baseline" for t in study.trials):
            study.enqueue_trial(base, user_attrs={"role": "baseline"})
        for params in seeds_for(done, new_names, top):
            study.enqueue_trial(params)
        trials += _loop(cfg_r, study, sim, pool_ids, round_trials, seen, evaluated, count)
        done.append((cfg_r, study))
    return _outcome(evaluated) | {"better_children": int(better), "worse_children": int(worse),
                                  "trials": trials, "copied": copied}


def _outcome(evaluated):
    pick = max(evaluated, key=lambda e: e[0])
    return {"picked_true": pick[1], "best_true": max(e[1] for e in evaluated),
            "paid": len(evaluated)}


ARMS = ("fixed", "rounds_fresh", "rounds")


def proposals_main(args, cfg0, pool_ids) -> None:
    budget = (args.rounds + 1) * args.round_trials
    rows = []
    t0 = time.perf_counter()
    load_start = os.getloadavg()[0]
    for seed in range(args.seeds):
        cfg = cfg0.model_copy(update={"seed": seed})

        def sim(cfg=cfg, seed=seed):
            return Simulator(cfg, pool_ids, args.queries, args.noise, seed)

        common = (pool_ids, args.rounds, args.per_round, args.round_trials, args.better_rate,
                  args.proposal_sd, seed, args.count)
        fixed = run_fixed(cfg, sim(), pool_ids, budget, args.count)
        fresh = run_proposal_rounds(cfg, sim(), *common, history=False)
        props = run_proposal_rounds(cfg, sim(), *common)
        rows.append({"seed": seed, "fixed": fixed, "rounds_fresh": fresh, "rounds": props})
        print(f"seed {seed}: fixed picked {fixed['picked_true']:.3f} (best {fixed['best_true']:.3f})"
              f" | fresh rounds picked {fresh['picked_true']:.3f} | rounds picked "
              f"{props['picked_true']:.3f} (best {props['best_true']:.3f}; "
              f"{props['better_children']} better / {props['worse_children']} worse children; "
              f"{props['paid']} paid of {props['trials']} trials, {props['copied']} copies)",
              flush=True)
    med = {f"{arm}_{m}": statistics.median(r[arm][m] for r in rows)
           for arm in ARMS for m in ("picked_true", "best_true", "paid")}
    wins = {arm: sum(r[arm]["picked_true"] > r["fixed"]["picked_true"] for r in rows)
            for arm in ARMS[1:]}
    res = {"config": str(args.config), "seeds": args.seeds, "budget": budget,
           "budget_counts": args.count, "rounds": args.rounds,
           "round_trials": args.round_trials, "per_round": args.per_round,
           "better_rate": args.better_rate, "proposal_sd": args.proposal_sd,
           "queries": args.queries, "noise_sd": args.noise, "median": med,
           "rounds_better_seeds": wins, "runs": rows, "seconds": time.perf_counter() - t0,
           "machine": {"cpus": os.cpu_count(), "optuna": optuna.__version__,
                       "load_avg_1m_start": round(load_start, 2),
                       "load_avg_1m_end": round(os.getloadavg()[0], 2)}}
    out = args.out if args.out != RESULTS else RESULTS.with_name("search_proposals.json")
    write_json(out, res)
    print(f"\nproposals vs fixed space: {args.seeds} seeds, budget {budget} {args.count} per "
          f"arm, {args.rounds} rounds x {args.per_round} proposals, better-rate "
          f"{args.better_rate}, proposal sd {args.proposal_sd}\n")
    print(f"{'arm':<14}{'median picked (true)':>22}{'median best evaluated':>24}"
          f"{'median paid':>13}")
    for arm in ARMS:
        print(f"{arm:<14}{med[arm + '_picked_true']:>22.3f}{med[arm + '_best_true']:>24.3f}"
              f"{med[arm + '_paid']:>13g}")
    for arm, n in wins.items():
        print(f"{arm} picked a better configuration than fixed on {n}/{args.seeds} seeds")
    print(f"wrote {out}")


def embedded_main(args) -> None:
    """`--embedded`: the embedded default (`studies/demo.toml`: Gemma 3 270M base, the default
    judge, its confirm set) with and without proposals, the base model as its own proposer
    (`[propose] spec = "self"`, 1 round of `--per-round` preambles, no restyle), at the same
    budget: `study run` with the config's `n_trials`, against `propose run` with half of them
    per round. Both studies share the user cache, so round 0 of the rounds arm replays the
    plain study's first trials for free. Writes `bench/results/search_proposals_default.json`:
    each arm's confirmation summary (the confirmed best and its gains over the baselines)."""
    import re
    import subprocess

    from icl_search.study.confirm import summarize

    folder = ROOT / "runs" / "propose-figure"
    folder.mkdir(parents=True, exist_ok=True)
    src = re.sub(r'"(\.\./[^"]*)"', lambda m: f'"{(ROOT / "studies" / m.group(1)).resolve()}"',
                 (ROOT / "studies" / "demo.toml").read_text())
    n = load_config(ROOT / "studies" / "demo.toml").optuna.n_trials
    without = folder / "without.toml"
    without.write_text(src.replace('name = "demo"', 'name = "pf-without"'))
    with_ = folder / "with.toml"
    with_.write_text(re.sub(r"(?m)^n_trials = \d+", f"n_trials = {n // 2}",
                            src.replace('name = "demo"', 'name = "pf-with"'))
                     + f'\n[propose]\nspec = "self"\nrounds = 1\nper_round = {args.per_round}'
                       '\nrestyle = false\n')
    load = [round(os.getloadavg()[0], 2)]
    t0 = time.perf_counter()
    cli = [sys.executable, "-m", "icl_search.cli"]
    for cmd in (["study", "run", str(without)], ["propose", "run", str(with_)]):
        print("$ icl-search " + " ".join(cmd), flush=True)
        subprocess.run(cli + cmd, check=True)
    load.append(round(os.getloadavg()[0], 2))
    res: dict = {"config": "studies/demo.toml", "budget_trials": n,
                 "per_round": args.per_round, "seconds": time.perf_counter() - t0,
                 "machine": {"cpus": os.cpu_count(), "load_avg_1m_start": load[0],
                             "load_avg_1m_end": load[1]}}
    for arm, path, study_name in (("without", without, "pf-without"),
                                  ("with", with_, "pf-with.r1")):
        cfg = load_config(path)
        study = optuna.load_study(study_name=study_name, storage=cfg.storage_url)
        summary = summarize(study)
        own = [t for t in study.trials if "copied_from" not in t.user_attrs]
        res[arm] = {"study": study_name, "trials_own": len(own),
                    "confirm": summary.to_dict() if summary else None}
        print(f"{arm:<8} {study_name}: {summary.sentence() if summary else 'not confirmed'}")
    rounds = optuna.load_study(study_name="pf-with.r1", storage=load_config(with_).storage_url)
    res["proposals"] = rounds.user_attrs.get("propose", {}).get("proposals")
    out = RESULTS.with_name("search_proposals_default.json")
    write_json(out, res)
    print(f"wrote {out}")


def tpe_variant(cfg: StudyConfig, name: str) -> optuna.samplers.BaseSampler:
    """`study`: exactly `make_sampler(cfg)`; the others change one or two settings."""
    if name == "study":
        return make_sampler(cfg)
    settings = {
        "startup10": {"multivariate": True, "group": True, "n_startup_trials": 10},
        "startup20": {"multivariate": True, "group": True, "n_startup_trials": 20},
        "independent": {"multivariate": False, "group": False,
                            "n_startup_trials": cfg.optuna.n_startup_trials},
        "multivariate": {"multivariate": True, "group": False,
                             "n_startup_trials": cfg.optuna.n_startup_trials},
    }
    if name not in settings:
        raise SystemExit(f"--tpe: unknown variant {name!r}; accepted: study, "
                         f"{', '.join(settings)}")
    return optuna.samplers.TPESampler(seed=cfg.seed, constant_liar=True,
                                      warn_independent_sampling=False, **settings[name])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=ROOT / "studies" / "demo.toml")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--cap", type=int, default=1000, help="most trials per run")
    ap.add_argument("--queries", type=int, default=8, help="eval queries per trial")
    ap.add_argument("--noise", type=float, default=0.7, help="per-query noise sd (1-5 scale)")
    ap.add_argument("--level", type=float, default=0.95, help="share of the optimum to reach")
    ap.add_argument("--hit-sample", type=int, default=20_000,
                    help="random configurations drawn to measure each instance's hit rate")
    ap.add_argument("--tpe", default="study",
                    help="comma-separated TPE settings: study (make_sampler), startup10, "
                         "startup20, independent, multivariate")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--proposals", action="store_true",
                    help="rounds with proposals vs the fixed space (see the module docstring)")
    ap.add_argument("--embedded", action="store_true",
                    help="the embedded default with and without proposals, confirmed (see "
                         "embedded_main; minutes to an hour on CPU)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--round-trials", type=int, default=40, help="trials per round")
    ap.add_argument("--count", choices=("trials", "paid"), default="trials",
                    help="what a budget counts: trials, as the product does (a repeated "
                         "configuration is free but takes its trial), or paid (new) "
                         "configurations only")
    ap.add_argument("--per-round", type=int, default=4, help="proposals per round")
    ap.add_argument("--better-rate", type=float, default=0.3,
                    help="share of proposals better than their parent")
    ap.add_argument("--proposal-sd", type=float, default=0.25,
                    help="sd of a proposal's utility change against its parent")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)

    cfg0 = load_config(args.config)
    pool_ids = cfg0.search.fixed_candidates or Pool.load(cfg0.path(cfg0.pool.path)).ids
    if args.embedded:
        embedded_main(args)
        return
    if args.proposals:
        proposals_main(args, cfg0, pool_ids)
        return
    samplers = [f"tpe:{v}" for v in args.tpe.split(",")] + ["random"]
    runs: dict[str, list[dict]] = {s: [] for s in samplers}
    draw = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=12345))
    sample = []
    for _ in range(args.hit_sample):
        t = draw.ask()
        sample.append(suggest(t, cfg0, pool_ids))
        draw.tell(t, 0.0)
    instances = []
    for seed in range(args.seeds):
        cfg = cfg0.model_copy(update={"seed": seed})
        probe = Simulator(cfg, pool_ids, args.queries, args.noise, seed)
        opt, opt_spec = probe.optimum(list(cfg.search.strategies))
        target = args.level * opt
        baseline = suggest(optuna.trial.FixedTrial(baseline_params(cfg, pool_ids)), cfg,
                           pool_ids)
        hits = sum(probe.true_score(s) >= target for s in sample)
        p = hits / len(sample)
        instances.append({"seed": seed, "optimum": opt, "target": target,
                          "random_hit_rate": p,
                          "random_median_estimate": float(np.log(2) / p) if p else None,
                          "optimum_spec": opt_spec.to_dict(),
                          "baseline": probe.true_score(baseline)})
        for name in samplers:
            sim = Simulator(cfg, pool_ids, args.queries, args.noise, seed)  # same noise stream
            sampler = (optuna.samplers.RandomSampler(seed=seed) if name == "random"
                       else tpe_variant(cfg, name.split(":", 1)[1]))
            r = run_one(cfg, sampler, sim, pool_ids, target, args.cap)
            runs[name].append(r | {"seed": seed})
            print(f"seed {seed} {name:<18} trials {r['trials']:>4}"
                  f"{'' if r['reached'] else ' (not reached)'}  {r['seconds']:.1f}s", flush=True)

    summary = {}
    for name, rs in runs.items():
        trials = [r["trials"] for r in rs]
        summary[name] = {"median_trials": statistics.median(trials), "trials": trials,
                         "not_reached": sum(not r["reached"] for r in rs),
                         "seconds": sum(r["seconds"] for r in rs)}
    rnd = summary["random"]["median_trials"]
    for name in samplers[:-1]:
        summary[name]["ratio_to_random"] = summary[name]["median_trials"] / rnd
    ests = [i["random_median_estimate"] or float("inf") for i in instances]
    med = statistics.median(ests)
    summary["random"]["median_of_estimates"] = med if np.isfinite(med) else None
    res = {
        "config": str(args.config.relative_to(ROOT) if args.config.is_relative_to(ROOT)
                      else args.config),
        "seeds": args.seeds, "cap": args.cap, "queries": args.queries, "noise_sd": args.noise,
        "level": args.level, "batch_trials": cfg0.optuna.batch_trials,
        "n_startup_trials": cfg0.optuna.n_startup_trials,
        "simulator": {"base": BASE, "sd_system": SD_SYSTEM, "sd_k": SD_K,
                      "sd_strategy": SD_STRATEGY, "sd_example": SD_EXAMPLE,
                      "mmr_penalty": MMR_PENALTY},
        "instances": instances, "summary": summary, "runs": runs,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "optuna": optuna.__version__, "load_avg_1m": round(os.getloadavg()[0], 2)},
    }
    write_json(args.out, res)

    print(f"\nsearch efficiency: {args.config.name}, {args.seeds} seeds, cap {args.cap}, "
          f"{args.queries} queries/trial, noise sd {args.noise}, target {args.level:.0%} of "
          f"the optimum (mean optimum {np.mean([i['optimum'] for i in instances]):.3f}, "
          f"mean baseline {np.mean([i['baseline'] for i in instances]):.3f})\n")
    print(f"{'sampler':<18}{'median':>8}{'not reached':>13}{'vs random':>11}   per seed")
    for name, s in summary.items():
        ratio = f"{s['ratio_to_random']:.2f}" if "ratio_to_random" in s else "-"
        print(f"{name:<18}{s['median_trials']:>8g}{s['not_reached']:>13}{ratio:>11}   "
              f"{' '.join(str(t) for t in s['trials'])}")
    est = med
    print(f"\nrandom search past the cap: per-instance hit rates over {args.hit_sample} random "
          f"configurations give a median of ~{est:.0f} trials (per instance: "
          f"{' '.join(f'{e:.0f}' for e in ests)})")
    for name in samplers[:-1]:
        print(f"{name}: {summary[name]['median_trials'] / est:.3f} of that estimate")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
