"""`icl-search judge score | calibrate | distill | prepare`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from icl_search.cli import app, fail

judge_app = typer.Typer(help="Score answers with the LLM judge; measure its agreement with a "
                        "reference judge.", no_args_is_help=True)
app.add_typer(judge_app, name="judge")
err = Console(stderr=True)

JUDGE_HELP = ("Judge spec: 'default' (the reference-anchored judge, prepared once; rows "
              "without a 'reference' get its reference-free part), 'reward:default' (the "
              "old default, no reference), 'refsim' (similarity to the row's 'reference'), "
              "'anchored:DIR', 'reward:DIR', 'distilled:DIR', 'logprob:vllm:MODEL', 'sample:vllm:MODEL', "
              "'openai:http://host:port/v1' (completions + logprobs), "
              "'dspy:openai/NAME' or 'dspy:openai/NAME@http://host:port/v1' (chat, JSON "
              "rubric; key from ICL_SEARCH_JUDGE_API_KEY or OPENAI_API_KEY).")
TIMEOUT_HELP = ("Seconds to wait for one request to a remote judge (openai:, dspy:; default "
                "120). A request that times out is a miss, retried on the next run.")


def _out() -> Console:
    # Piped or captured output keeps whole figures instead of rich's 80-column truncation.
    return Console() if sys.stdout.isatty() else Console(width=160)




def _fmt(x: Any, digits: int = 2) -> str:
    return "-" if x is None else (f"{x:.{digits}f}" if isinstance(x, float) else str(x))


def _build_judge(spec: str, cache: Path | None, no_cache: bool, rubric: Path | None,
                 safety_rubric: Path | None, max_model_len: int | None,
                 timeout: float | None = None):
    from icl_search.cache import Cache
    from icl_search.errors import IclSearchError
    from icl_search.judge import JudgeError, RubricError, make_judge
    from icl_search.models import ModelError

    opts: dict[str, Any] = {"max_model_len": max_model_len} if max_model_len else {}
    if timeout is not None:
        opts["timeout"] = timeout
    try:
        return make_judge(spec, cache=None if no_cache else Cache(cache), rubric=rubric,
                          safety_rubric=safety_rubric, **opts)
    except (IclSearchError, JudgeError, RubricError, ModelError, ValueError) as exc:
        fail(str(exc))


@judge_app.command("prepare")
def prepare_cmd(
    data: Path | None = typer.Option(None, "--data", help="Reference data folder (alpaca-eval/ "
                                     "and just-eval/; default $ICL_SEARCH_DATA, else "
                                     "../shared/data beside the repository)."),
    kind: str = typer.Option("anchored", "--kind", help="anchored: the default judge "
                             "(`--judge default`); reward: the reward judge alone "
                             "(`reward:default`, the old default)."),
    force: bool = typer.Option(False, "--force", help="Train again even if prepared."),
    threads: int | None = typer.Option(None, min=1, help="CPU threads for torch."),
    overrides: list[str] = typer.Option([], "--set", metavar="FIELD=VALUE", help="Override "
                                        "one field of the shipped reward recipe (repeatable), "
                                        "e.g. --set seed=1 --set length_covariate=false. "
                                        "Fields: base, max_length, query_tokens, tail_share, "
                                        "group_size, steps, learning_rate, freeze_layers, "
                                        "length_covariate, safety_share, pair_margin, seed. "
                                        "Another recipe is another folder (its key)."),
) -> None:
    """Prepare the default judge (`--judge default`) once from the reference data into
    $ICL_SEARCH_HOME/judges/: its reward head trained on GPT-4-turbo's within-query
    preferences and just-eval's safety verdicts, its weights fitted on other training queries
    (a few minutes on 2 cores); a no-op when it is already prepared. Prints its judge spec,
    `anchored:DIR` (with --kind reward: `reward:DIR`; with --set: that recipe's judge, while
    `--judge default` stays the shipped recipe)."""
    from icl_search.errors import IclSearchError
    from icl_search.judge.prepare import DEFAULT_RECIPE, prepare_anchored, prepare_default
    from icl_search.judge.reward import recipe_with

    if kind not in ("anchored", "reward"):
        fail(f"--kind {kind!r}: expected anchored or reward")
    try:
        recipe = recipe_with(overrides, DEFAULT_RECIPE)
        if kind == "reward":
            path = prepare_default(data, recipe=recipe, force=force, threads=threads, say=_say)
        else:
            path = prepare_anchored(data, reward=recipe, force=force, threads=threads,
                                    say=_say)
    except IclSearchError as exc:
        fail(str(exc))
    typer.echo(f"{kind}:{path}")


def _say(message: str) -> None:
    err.print(message, highlight=False)


def _check_spec(spec: str) -> None:
    """A typo in --judge fails before any file is read or model loaded."""
    from icl_search.judge import JudgeError, parse_judge_spec

    try:
        parse_judge_spec(spec)
    except JudgeError as exc:
        fail(str(exc))


def _read_items(path: Path):
    from icl_search.io import read_jsonl_objects
    from icl_search.judge import to_item

    items, seen = [], {}
    try:
        rows = list(read_jsonl_objects(path))
    except ValueError as exc:
        fail(str(exc))
    for lineno, row in rows:
        row.setdefault("id", str(lineno))
        try:
            item = to_item(row, lineno)
        except (ValueError, TypeError) as exc:
            fail(f"{path}:{lineno}: {exc}")
        if item.id in seen:
            fail(f"{path}:{lineno}: field 'id': duplicate id {item.id!r} "
                 f"(first on line {seen[item.id]})")
        seen[item.id] = lineno
        items.append(item)
    if not items:
        fail(f"{path}: no rows")
    return items


def summary_table(result, title: str) -> Table:
    import numpy as np

    t = Table("aspect", "mean", "coverage", "mean length (words)", "misses", title=title)
    cov = result.coverage
    for aspect, mean in result.aspect_means.items():
        rated = [it for it in result.items if aspect in it.aspects]
        reasons: dict[str, int] = {}
        for it in rated:
            if aspect in it.missing:
                kind = it.missing[aspect].split(":", 1)[0]
                reasons[kind] = reasons.get(kind, 0) + 1
        t.add_row(aspect, _fmt(mean), f"{cov[aspect]} ({cov[aspect].fraction:.0%})",
                  _fmt(float(np.mean([it.length_words for it in rated])), 0),
                  ", ".join(f"{k} x{n}" for k, n in reasons.items()) or "-")
    t.add_row("[bold]overall[/]", _fmt(result.overall), "", _fmt(result.mean_length, 0), "",
              end_section=True)
    return t


@judge_app.command("score")
def score(
    responses: Path = typer.Argument(..., help="JSONL: id, query, response (or 'answer', as "
                                     "`icl-search generate` writes), category ('safety' selects "
                                     "the safety rubric)."),
    out: Path = typer.Option(..., "--out", "-o", help="Scores, one row per item (Parquet; "
                             "a .jsonl name writes JSONL)."),
    judge: str = typer.Option("default", "--judge", help=JUDGE_HELP),
    min_coverage: float | None = typer.Option(
        None, min=0.0, max=1.0, help="Fail (exit 2) when an aspect was judged on less than "
        "this fraction of its items; the scores are written first."),
    rubric: Path | None = typer.Option(None, help="Rubric file for regular queries."),
    safety_rubric: Path | None = typer.Option(None, help="Rubric file for safety queries."),
    max_model_len: int | None = typer.Option(None, help="Context window of a local judge "
                                                "model (default 4096)."),
    timeout: float | None = typer.Option(None, "--timeout", min=0.1, help=TIMEOUT_HELP),
    cache: Path | None = typer.Option(None, help="Judge cache file "
                                         "(default: $ICL_SEARCH_HOME/cache.sqlite3)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Always ask the judge."),
) -> None:
    """Score query/response pairs on the just-eval aspects and print a per-aspect summary."""
    from icl_search.io import atomic_write, write_jsonl
    from icl_search.judge import CoverageError, JudgeError

    _check_spec(judge)
    items = _read_items(responses)
    j = _build_judge(judge, cache, no_cache, rubric, safety_rubric, max_model_len, timeout)
    try:
        result = j.score(items, progress=True)
    except JudgeError as exc:
        fail(str(exc))
    if out.suffix == ".jsonl":
        write_jsonl(out, result.rows())
    else:
        with atomic_write(out, "wb") as fh:
            result.to_frame().write_parquet(fh)
    _out().print(summary_table(result, f"judge {result.judge_id}"))
    err.print(f"wrote {len(result.items)} rows to {out} ({result.cache_hits} from cache)",
              highlight=False)
    if result.reference_free:
        err.print(f"{result.reference_free} rows had no 'reference': scored by the judge's "
                  "reference-free part", highlight=False)
    if min_coverage is not None:
        try:
            result.require_coverage(min_coverage)
        except CoverageError as exc:
            fail(str(exc))


@judge_app.command("calibrate")
def calibrate(
    reference: Path | None = typer.Option(None, "--reference", help="Reference judgements "
                                          "JSONL (id, generator, scores, optional output), "
                                          "e.g. just-eval's judgements/reference.dev.jsonl. "
                                          "Without it: the preference figures on the held-out "
                                          "queries of --data."),
    data: Path | None = typer.Option(None, "--data", help="Reference data folder (alpaca-eval/ "
                                     "and just-eval/; default $ICL_SEARCH_DATA, else "
                                     "../shared/data beside the repository)."),
    queries: int | None = typer.Option(None, "--queries", min=1, help="Preference figures: "
                                       "keep the first N held-out AlpacaEval queries (a slow "
                                       "judge's subsample)."),
    safety_queries: int | None = typer.Option(None, "--safety-queries", min=1,
                                              help="Preference figures: at most N held-out "
                                              "just-eval safety queries."),
    outputs: Path | None = typer.Option(None, help="Folder of system outputs JSONL (default: "
                                           "../outputs beside the reference file)."),
    instructions: Path | None = typer.Option(None, help="Instructions JSONL (default: "
                                                "../instructions.dev.jsonl)."),
    judge: str = typer.Option("default", "--judge", help=JUDGE_HELP),
    limit: int | None = typer.Option(None, min=1, help="At most N query ids per category, "
                                        "spread over the ids (all systems for each)."),
    systems: str | None = typer.Option(None, help="Comma-separated systems to keep."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write the figures as JSON."),
    rubric: Path | None = typer.Option(None, help="Rubric file for regular queries."),
    safety_rubric: Path | None = typer.Option(None, help="Rubric file for safety queries."),
    max_model_len: int | None = typer.Option(None, help="Context window of a local judge."),
    timeout: float | None = typer.Option(None, "--timeout", min=0.1, help=TIMEOUT_HELP),
    cache: Path | None = typer.Option(None, help="Judge cache file."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Always ask the judge."),
) -> None:
    """Agreement with reference judges. Without --reference: on held-out queries (split by
    query), within-query pair agreement with GPT-4-turbo on all pairs and on the length-matched
    subset (next to "longer" and chance), system Spearman against the AlpacaEval LC win rates,
    NullModel's rank, just-eval safety AUC and items/s. With --reference: Spearman, Kendall,
    MAE per aspect and pairwise system agreement against those judgements."""
    from icl_search.errors import IclSearchError
    from icl_search.io import write_json
    from icl_search.judge import JudgeError
    from icl_search.judge.calibration import ReferenceFileError, load_reference, select
    from icl_search.judge.calibration import calibrate as run

    _check_spec(judge)
    if reference is None:
        from icl_search.judge.metrics import calibrate_preferences

        j = _build_judge(judge, cache, no_cache, rubric, safety_rubric, max_model_len, timeout)
        try:
            figures = calibrate_preferences(j, data, queries=queries,
                                            safety_queries=safety_queries, progress=True)
        except (IclSearchError, JudgeError) as exc:
            fail(str(exc))
        _out().print(preference_table([figures]))
        if out:
            write_json(out, figures)
            err.print(f"wrote {out}", highlight=False)
        return
    try:
        rows = load_reference(reference, outputs=outputs, instructions=instructions)
        rows = select(rows, limit=limit,
                      systems=[s.strip() for s in systems.split(",") if s.strip()]
                      if systems else None)
    except (ReferenceFileError, ValueError) as exc:
        fail(str(exc))
    j = _build_judge(judge, cache, no_cache, rubric, safety_rubric, max_model_len, timeout)
    try:
        cal, result = run(j, rows, progress=True)
    except JudgeError as exc:
        fail(str(exc))
    _out().print(calibration_table(cal))
    if cal.systems:
        _out().print(systems_table(cal))
    if out:
        write_json(out, {**cal.to_dict(), "reference": str(reference), "limit": limit,
                         "summary": result.summary()})
        err.print(f"wrote {out}", highlight=False)


def preference_table(rows: list[dict[str, Any]], title: str = "judges on held-out queries"
                     ) -> Table:
    """One row per judge: the figures of `calibrate_preferences`."""
    t = Table("judge", "queries", "matched (words)", "longer", "matched (chars)", "longer",
              "agree (all)", "longer", "system rho", "NullModel rank", "safety AUC",
              "items/s", title=title,
              caption="agreement with GPT-4-turbo on within-query pairs (chance 0.50); "
                      "matched = lengths (words, or characters) within 1.25x, preferences "
                      ">= 0.3 apart, pair counts in brackets; system rho = Spearman of mean "
                      "score vs AlpacaEval LC win rate (23 models); NullModel rank among all "
                      "systems, 1 = best")
    for f in rows:
        t.add_row(f["judge"], str(f["queries"]),
                  f"{_fmt(f['agreement_matched'], 3)} ({f['matched_pairs']})",
                  _fmt(f["longer_matched"], 3),
                  f"{_fmt(f.get('agreement_matched_chars'), 3)} "
                  f"({f.get('matched_pairs_chars', '-')})",
                  _fmt(f.get("longer_matched_chars"), 3),
                  _fmt(f["agreement_all"], 3), _fmt(f["longer_all"], 3),
                  _fmt(f["system_spearman"], 3),
                  f"{f['null_rank']}/{f['systems']}" if f.get("null_rank") else "-",
                  _fmt(f["safety_auc"], 3), _fmt(f["items_per_s"], 1))
    return t


def calibration_table(cal) -> Table:
    judges = sorted({j for a in cal.aspects for j in a["reference_judges"]})
    t = Table("aspect", "n", "cover", "spearman", "kendall", "MAE", "MAE med", "ours/ref",
              "sys pairs", "item pairs", title=f"judge {cal.judge}",
              caption=f"reference: {', '.join(judges)}; MAE med = error of always answering "
                      "the reference median; pairs = share of system pairs ordered as the "
                      "reference orders them")
    for a in cal.aspects:
        t.add_row(a["aspect"], str(a["n"]), f"{a['coverage']:.0%}", _fmt(a["spearman"]),
                  _fmt(a["kendall"]), _fmt(a["mae"]), _fmt(a["mae_median_baseline"]),
                  f"{_fmt(a['mean_ours'])}/{_fmt(a['mean_reference'])}",
                  _pairs(a["system_pair_agreement"], a["system_pairs"]),
                  _pairs(a["item_pair_agreement"], a["item_pairs"]))
    return t


def systems_table(cal) -> Table:
    t = Table("aspect", "system", "n", "mean words", "ours", "ours, length-controlled",
              "reference", title="systems compared on the same queries",
              caption="length-controlled: scores moved to the median response length with the "
                      "slope on log length fitted within systems and queries")
    for s in cal.systems:
        t.add_row(s["aspect"], s["system"], str(s["n"]), _fmt(s["mean_words"], 0),
                  _fmt(s["mean_ours"]), _fmt(s["mean_ours_length_controlled"]),
                  _fmt(s["mean_reference"]))
    return t


def _pairs(agreement: float | None, n: int | None) -> str:
    return "-" if agreement is None else f"{agreement:.0%} of {n}"


@judge_app.command("distill")
def distill_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the distilled model and its "
                             "distilled.json manifest (replaced atomically)."),
    scores: list[Path] = typer.Option([], "--scores", help="Judged records: a score file of "
                                      "`judge score` (with --responses) or JSONL/Parquet rows "
                                      "with query, response and scores. Repeatable."),
    responses: Path | None = typer.Option(None, "--responses", help="The JSONL that was scored, "
                                          "joined on id when a score file holds no texts."),
    reference: Path | None = typer.Option(None, "--reference", help="Also train on reference "
                                          "judgements (just-eval's judgements/"
                                          "reference.dev.jsonl, outputs and instructions beside)."),
    aspects: str | None = typer.Option(None, "--aspects", help="Comma-separated aspects to "
                                       "learn, or 'overall' (default: every aspect present)."),
    epochs: int = typer.Option(1, min=1, help="Passes over the training pairs."),
    batch_size: int = typer.Option(16, min=1, help="Training batch size."),
    learning_rate: float = typer.Option(5e-5, min=0.0, help="AdamW learning rate."),
    max_length: int = typer.Option(256, min=16, help="Tokens of query + response read."),
    test_fraction: float = typer.Option(0.2, min=0.0, max=0.95, help="Queries held out."),
    seed: int = typer.Option(0, help="Seed for the split and the training order."),
    base_model: str | None = typer.Option(None, "--base-model", help="Model to start from "
                                          "(default: the packaged MiniLM embedder)."),
    threads: int | None = typer.Option(None, min=1, help="CPU threads for torch."),
) -> None:
    """Train a cross-encoder on judge verdicts: a cheap judge (`distilled:DIR`) scoring in the
    same 1-5 units; prints Spearman and AUC per aspect on held-out queries."""
    from icl_search.judge.distill import distill
    from icl_search.judge.records import DistillError, load_records, reference_records

    if not scores and reference is None:
        fail("nothing to train on: give --scores FILE and/or --reference FILE")
    records, sources = [], []
    try:
        for path in scores:
            records += load_records(path, responses=responses)
            sources.append(path)
        if responses is not None and scores:
            sources.append(responses)
        if reference is not None:
            records += reference_records(reference)
            sources.append(reference)
        d = distill(records, out, base_model=base_model, aspects=aspects, epochs=epochs,
                    batch_size=batch_size, learning_rate=learning_rate, max_length=max_length,
                    test_fraction=test_fraction, seed=seed, sources=sources, threads=threads,
                    progress=True, say=lambda m: err.print(m, highlight=False))
    except DistillError as exc:
        fail(str(exc))
    m = d.manifest
    t = Table("aspect", "n", "spearman", "AUC (<=2 vs >=4)", "low/high", "MAE",
              title=f"distilled judge {out} (held-out queries: {m['n_test_queries']})",
              caption=f"trained on {m['n_train']} records in {m['train_seconds']:.0f} s")
    for aspect, f in m["metrics"].items():
        t.add_row(aspect, str(f["n"]), _fmt(f["spearman"]), _fmt(f["auc"]),
                  f"{f['auc_low']}/{f['auc_high']}", _fmt(f["mae"]))
    _out().print(t)
    err.print(f"wrote {out} (judge spec: distilled:{out})", highlight=False)
