"""`icl-search review make|serve|rate|score`: blind pairwise review of two contexts' answers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from icl_search.cli import app, fail

review_app = typer.Typer(help="Blind pairwise review: people (or an LLM) compare two contexts' "
                              "answers without knowing which is which.", no_args_is_help=True)
app.add_typer(review_app, name="review")
err = Console(stderr=True)


def _answer_files(items: list[str]) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        name = name.strip()
        if not sep or not name or not path:
            fail(f"--answers {item!r}: expected NAME=FILE, e.g. --answers bundle=answers.jsonl")
        if name in files:
            fail(f"--answers: the name {name!r} is given twice")
        files[name] = Path(path)
    return files


@review_app.command("make")
def make_cmd(
    answers: Annotated[list[str], typer.Option(
        "--answers", metavar="NAME=FILE",
        help="An answer file as `generate` writes it (JSONL: id, query, answer), under a name; "
             "repeat for each context.")],
    compare: Annotated[list[str], typer.Option(
        "--compare", metavar="A:B",
        help="Pair the answers of A with those of B (the score gives A's win rate); "
             "repeatable.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Review folder to write.")],
    readers: Annotated[int, typer.Option("--readers", min=1,
                                         help="Sheets to write, one per reader.")] = 1,
    overlap: Annotated[int, typer.Option(
        "--overlap", min=0, help="Pairs put on every sheet, to measure agreement between "
                                 "readers (needs --readers 2 or more).")] = 0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the shuffles.")] = 0,
    queries: Annotated[Path | None, typer.Option(
        "--queries", help="The query file answered (JSONL with id, category): the category of "
                          "answer rows that carry none (safety or regular in the score).")
    ] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Replace an existing review folder even if it holds verdicts.")
    ] = False,
) -> None:
    """Pair the answers of two contexts to the same queries, shuffle each pair's sides into X
    and Y, keep the key apart (key.json) and write one sheet per reader."""
    from icl_search.review import make_review_from_files

    summary = make_review_from_files(_answer_files(answers), compare, out, queries=queries,
                                     readers=readers, overlap=overlap, seed=seed, force=force)
    typer.echo("\n".join(summary.lines()))
    typer.echo(f"next: icl-search review serve {out}")


@review_app.command("serve")
def serve_cmd(
    folder: Annotated[Path, typer.Argument(metavar="DIR", help="Review folder (review make).")],
    host: Annotated[str, typer.Option(
        "--host", help="Address to bind; loopback unless raters are on other machines.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port.")] = 8765,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level.")
                         ] = "warning",
) -> None:
    """Serve the rating page: a rater gives a name, then rates one pair at a time (keys 1 / 2
    / 3 or buttons); each verdict is saved at once to DIR/verdicts-NAME.jsonl."""
    import uvicorn

    from icl_search.cli.serve import _is_loopback
    from icl_search.review.web import create_app

    application = create_app(folder)
    if not _is_loopback(host):
        err.print(escape(f"warning: serving the review on {host}: anyone who can reach this "
                         "address can read the answers and add verdicts"), highlight=False)
    n = len(application.state.desk.folder.pairs)
    err.print(escape(f"review of {n} pairs at http://{host}:{port}/ (Ctrl-C to stop)"),
              highlight=False)
    uvicorn.run(application, host=host, port=port, log_level=log_level)


@review_app.command("rate")
def rate_cmd(
    folder: Annotated[Path, typer.Argument(metavar="DIR", help="Review folder.")],
    judge: Annotated[str, typer.Option(
        "--judge", help="Judge spec: logprob:<engine>, sample:<engine> or "
                        "dspy:<provider>/<model>[@<api_base>].")],
    max_model_len: Annotated[int | None, typer.Option(
        "--max-model-len", min=64, help="Judge context window (local engines).")] = None,
) -> None:
    """Rate every pair with an LLM: each pair is asked in both orders and a side wins only when
    both orders agree (else a tie). Verdicts go under the rater name llm:SPEC; a rerun rates
    only the pairs left."""
    from tqdm.auto import tqdm

    from icl_search.review import ReviewFolder, rate_review

    total = len(ReviewFolder(folder).pairs)
    opts = {"max_model_len": max_model_len} if max_model_len else {}
    with tqdm(total=total, desc="rating", unit="pair", file=err.file) as bar:
        s = rate_review(folder, judge, progress=bar.update, **opts)
    if s.missing and not s.rated:
        fail(f"judge {judge}: no verdict for any of the {len(s.missing)} pairs asked (pair "
             f"{s.missing[0][0]}: {s.missing[0][1]})")
    typer.echo(s.line())
    for pair, reason in s.missing[:5]:
        err.print(escape(f"  pair {pair}: {reason}"), highlight=False)


@review_app.command("score")
def score_cmd(
    folder: Annotated[Path, typer.Argument(metavar="DIR", help="Review folder.")],
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Also write the score: JSON (.json) or Markdown (any other name).")
    ] = None,
) -> None:
    """Unblind: per comparison, the left side's win rate (ties count half) with a Wilson 95%
    interval, the counts, regular vs safety, and agreement between raters on shared pairs."""
    from icl_search.io import atomic_write
    from icl_search.review import score_lines, score_review

    score = score_review(folder)
    lines = score_lines(score)
    typer.echo("\n".join(lines))
    if out is not None:
        with atomic_write(out) as fh:
            if out.suffix == ".json":
                json.dump(score, fh, indent=2)
                fh.write("\n")
            else:
                fh.write("\n".join(lines) + "\n")
        err.print(escape(f"wrote {out}"), highlight=False)
