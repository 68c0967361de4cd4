"""`icl-search compare STUDY_OR_CONFIG...`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from icl_search.cli import app

err = Console(stderr=True)


@app.command("compare")
def compare_cmd(
    studies: list[str] = typer.Argument(..., help="Study configs (.toml), or study names in "
                                        "--storage: one row each."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for compare.md, compare.csv, "
                             "compare.png and compare.html."),
    storage: str | None = typer.Option(None, help="Storage URL for study names (and instead "
                                          "of each config's own storage)."),
    transfer: bool = typer.Option(False, "--transfer", help="Also answer each study's confirm "
                                  "set with every other study's bundle (this study's model, "
                                  "this study's judges)."),
    review: list[str] = typer.Option([], "--review", help="NAME=DIR: the blind review folder "
                                     "(`icl-search review`) of study NAME's bundle against "
                                     "inst_1k; repeatable."),
    stored: bool = typer.Option(False, "--stored", help="Read only what is stored: load no "
                                "model (zero-shot and transfer cells not yet evaluated stay "
                                "empty, named)."),
) -> None:
    """Studies side by side, as URIAL's Table 1: one row per study (base model) with
    zero-shot, URIAL's inst_1k, the project's baseline and the exported bundle, each with its
    confirm score and 95% interval under the study's judge and every audit judge; hygiene and
    length per context; the blind-review win rate of the bundle over inst_1k. Studies judged
    differently or confirmed on different query sets get tables of their own."""
    from icl_search.compare import compare

    _, written = compare(studies, out, storage=storage, transfer=transfer, reviews=review,
                         evaluate=not stored, say=lambda m: err.print(m, highlight=False))
    for p in written:
        typer.echo(str(p))
