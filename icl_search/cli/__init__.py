"""The command-line surface (Typer). Each command group lives in its own module here."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="icl-search",
    help="Find, export and serve the in-context (URIAL) prompt that aligns a base LLM.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Command modules register themselves on `app` when imported.
from icl_search.cli import generate as _generate  # noqa: E402,F401
