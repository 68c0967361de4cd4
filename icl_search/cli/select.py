"""`icl-search select`: pick examples for one query and show the URIAL prompt they make."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from icl_search.cli import app
from icl_search.cli import fail as _fail
from icl_search.selection import DEFAULT_K, DEFAULT_MMR_LAMBDA, ORDERS, STRATEGIES

_err = Console(stderr=True)

StrategyName = StrEnum("StrategyName", {s: s for s in STRATEGIES})
OrderName = StrEnum("OrderName", {o: o for o in ORDERS})


# The kinds of icl_search.index.kinds.INDEX_KINDS (not imported here: faiss is slow to load).
class IndexType(StrEnum):
    auto = "auto"
    flat = "flat"
    hnsw = "hnsw"
    ivf = "ivf"


_OPTION_OF = {"fixed_ids": "--fixed", "k": "--k", "mmr_lambda": "--lambda",
              "dup_threshold": "--dup-threshold", "order": "--order"}




def _note(msg: str) -> None:
    _err.print(escape(msg), style="dim", highlight=False, soft_wrap=True)


def _preview(text: str, width: int = 70) -> str:
    one_line = " ".join(text.split())
    return one_line if len(one_line) <= width else one_line[: width - 1] + "…"


def _select_from_bundle(bundle_path: Path, query: str, *, exclude: list[str],
                        prompt_only: bool) -> None:
    """`select BUNDLE QUERY`: the bundle's own selection and template, nothing from options."""
    from icl_search.bundle import Bundle, BundleError

    if not query.strip():
        _fail("QUERY: the query is empty")
    try:
        bundle = Bundle.load(bundle_path)
        bundle.check_files()  # its pool, before the embedder loads
        chosen = bundle.select(query, exclude_ids=exclude)
        prompt = bundle.template.render(bundle.system, chosen, query)
    except BundleError as exc:
        _fail(str(exc))
    if prompt_only:
        typer.echo(prompt, nl=False)
        return
    if bundle.mode == "fixed":
        title = (f"fixed set: {len(chosen)} examples from {bundle_path} "
                 "(the query follows the last row)")
    else:
        r = bundle.retrieval
        assert r is not None
        title = (f"{r.selection.strategy}, k={r.selection.k}: {len(chosen)} examples from "
                 f"{bundle.pool_path} ({r.selection.effective_order}; the query follows the "
                 "last row)")
    _print_selection(title, chosen, prompt, anchors=bundle.mode == "retrieval")


def _print_selection(title: str, chosen, prompt: str, *, anchors: bool = True) -> None:
    """The chosen examples as a table (a `*` marks a fixed anchor), then the prompt."""
    out = Console(highlight=False)
    table = Table(title=title, title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("id", overflow="fold")
    table.add_column("category")
    table.add_column("score", justify="right")
    table.add_column("query")
    for i, s in enumerate(chosen, 1):
        score = "-" if s.score != s.score else f"{s.score:.3f}"  # NaN: a fixed set is not scored
        anchor = " *" if s.anchor and anchors else ""
        table.add_row(str(i), escape(s.id) + anchor, escape(s.category), score,
                      escape(_preview(s.query)))
    out.print(table)
    if anchors and any(s.anchor for s in chosen):
        out.print("* fixed anchor", style="dim")
    out.rule("prompt")
    typer.echo(prompt, nl=False)


@app.command("select")
def select_cmd(
    args: Annotated[list[str], typer.Argument(
        metavar="[BUNDLE] QUERY",
        help="The query (quote it). A bundle .json before it selects with that bundle's "
             "context instead of --pool.",
    )],
    pool: Annotated[Path | None, typer.Option(
        "--pool", "-p", help="Pool file to select from (JSONL/Parquet/CSV).")] = None,
    k: Annotated[int, typer.Option("--k", "-k", min=0, help="Number of examples.")] = DEFAULT_K,
    strategy: Annotated[StrategyName, typer.Option(
        "--strategy", "-s", help="How examples are chosen.")] = StrategyName.knn,
    mmr_lambda: Annotated[float, typer.Option(
        "--lambda", min=0.0, max=1.0, help="MMR trade-off: 1 = relevance only.")] = DEFAULT_MMR_LAMBDA,
    fixed: Annotated[list[str] | None, typer.Option(
        "--fixed", help="Example id for the fixed/hybrid strategies (repeat it).")] = None,
    order: Annotated[OrderName | None, typer.Option(
        "--order", help="Default: similar-last (fixed: given).")] = None,
    dup_threshold: Annotated[float, typer.Option(
        "--dup-threshold", min=0.0, max=1.0,
        help="Leakage guard: skip examples at least this similar to the query.")] = 0.95,
    exclude: Annotated[list[str] | None, typer.Option(
        "--exclude", help="Example id never to use (repeat it).")] = None,
    system: Annotated[Path | None, typer.Option(
        "--system", help="System preamble file (default: the package's URIAL-style one).")] = None,
    index_dir: Annotated[Path | None, typer.Option(
        "--index-dir", help="Index directory (default: <pool>.index/ beside the pool).")] = None,
    index_type: Annotated[IndexType, typer.Option(
        "--index-type",
        help="Index to build when none is fresh: auto = exact up to 5k examples, IVF with "
             "8-bit codes above.")
    ] = IndexType.auto,
    embedder: Annotated[str | None, typer.Option(
        "--embedder",
        help="sentence-transformers name or model directory (default: all-MiniLM-L6-v2).")
    ] = None,
    prompt_only: Annotated[bool, typer.Option(
        "--prompt-only", help="Print only the rendered prompt (for piping).")] = False,
) -> None:
    """Choose examples for QUERY and print them with scores, then the rendered URIAL prompt.

    The index (<pool>.index/) is built on first use and reused while fresh.

    Embeddings are cached under $ICL_SEARCH_HOME, so a rebuild embeds only new texts.
    """
    if len(args) > 2:
        _fail(f"expected [BUNDLE] QUERY, got {len(args)} arguments (quote the query)")
    if len(args) == 2:
        bundle, query = Path(args[0]), args[1]
        if pool is not None:
            _fail("give either a BUNDLE or --pool, not both")
        # A bundle carries its own selection settings; an option that would change them
        # is refused rather than silently ignored.
        given = {"--k": k != DEFAULT_K, "--strategy": strategy != StrategyName.knn,
                 "--lambda": mmr_lambda != DEFAULT_MMR_LAMBDA, "--fixed": bool(fixed), "--order": order is not None,
                 "--dup-threshold": dup_threshold != 0.95, "--system": system is not None,
                 "--index-dir": index_dir is not None, "--embedder": embedder is not None,
                 "--index-type": index_type != IndexType.auto}
        clash = [opt for opt, set_ in given.items() if set_]
        if clash:
            _fail(f"{', '.join(clash)}: the bundle {bundle} carries its own settings; "
                  "these options apply to --pool only")
        _select_from_bundle(bundle, query, exclude=list(exclude or ()), prompt_only=prompt_only)
        return
    query = args[0]
    if pool is None:
        if query.endswith(".json") and Path(query).is_file():
            _fail(f"{query}: a bundle needs a query after it: icl-search select BUNDLE QUERY")
        _fail("--pool: give the pool file to select from (or a BUNDLE before the query)")
    if not query.strip():
        _fail("QUERY: the query is empty")

    from pydantic import ValidationError

    from icl_search.index import Embedder, PoolIndex
    from icl_search.pool import Pool
    from icl_search.prompt import Template
    from icl_search.selection import SelectionConfig, Selector

    if system is None:
        from importlib.resources import files

        system_text = files("icl_search").joinpath("templates/system_default.txt").read_text("utf-8")
    else:
        try:
            system_text = system.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            _fail(f"{system}: cannot read the system preamble ({exc})")
    try:
        config = SelectionConfig(
            strategy=str(strategy), k=k, mmr_lambda=mmr_lambda, fixed_ids=list(fixed or ()),
            order=None if order is None else str(order), dup_threshold=dup_threshold,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        msg = first["msg"].removeprefix("Value error, ")
        field = ".".join(str(p) for p in first["loc"])
        msg = f"{field}: {msg}" if field else msg
        # Name the option the user typed, not the config field behind it.
        name, _, rest = msg.partition(": ")
        _fail(f"{_OPTION_OF.get(name, name)}: {rest}")
    # A PoolError (like every IclSearchError below) ends as `error: ...` via the CLI's root group.
    try:
        the_pool = Pool.load(pool)
    except OSError as exc:
        _fail(f"{pool}: cannot read the pool ({exc})")

    directory = index_dir or PoolIndex.default_dir(pool)
    emb = Embedder(embedder)
    try:
        index = PoolIndex.load(
            directory, the_pool, emb, on_stale="rebuild", kind=str(index_type),
            show_progress=not prompt_only,
            on_rebuild=lambda why: _note(f"building index in {directory}: {'; '.join(why)}"),
        )
    except OSError as exc:
        # An unwritable pool folder should not stop a one-off selection.
        _note(f"cannot save the index in {directory} ({exc}); using it unsaved")
        index = PoolIndex.build(the_pool, emb, str(index_type), show_progress=not prompt_only)
    chosen = Selector(index, config).select(query, exclude_ids=exclude or ())

    prompt = Template().render(system_text, chosen, query)
    if prompt_only:
        typer.echo(prompt, nl=False)
        return
    _print_selection(f"{config.strategy}, k={config.k}: {len(chosen)} of {len(the_pool)} "
                     f"examples from {pool} ({config.effective_order}; the query follows the "
                     "last row)", chosen, prompt)
