"""The command-line surface (Typer). Each command group lives in its own module here."""

from __future__ import annotations

import os
import warnings
from typing import NoReturn

import typer
from typer.core import TyperGroup, TyperOption

from icl_search.errors import IclSearchError

# Deprecation notices from vLLM/torch internals are not actionable for a CLI user.
warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=DeprecationWarning)

# vLLM logs every engine step at INFO; a CLI user wants the progress bar and errors.
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

def fail(msg: str, code: int = 2) -> NoReturn:
    """The one way a command ends on a user's mistake: `error: <msg>` on stderr, exit `code`.
    The message is escaped: paths and field lists often contain `[...]`, which rich would
    otherwise take for markup."""
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True).print(f"[bold red]error:[/] {escape(msg)}", highlight=False,
                               soft_wrap=True)
    raise typer.Exit(code)


class _Group(TyperGroup):
    """The root command group: any `IclSearchError` a command lets through (a bad file,
    field, spec or study) ends as `fail(message)`, so no command needs its own list of
    error classes to catch, and none ends in a traceback for a user's mistake."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except IclSearchError as exc:
            fail(str(exc))


app = typer.Typer(
    name="icl-search",
    cls=_Group,
    help="Find, export and serve the in-context (URIAL) prompt that aligns a base LLM.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Typer prints a `<bool>` type next to every on/off flag, which reads as if the flag took a
# value: flags show no type (every other option keeps its `<int>`, `<path>`, ...).
_display_type_rich = TyperOption.display_type_rich


def _flag_type(self: TyperOption, ctx) -> str | None:
    return None if self.is_bool_flag else _display_type_rich(self, ctx)


TyperOption.display_type_rich = _flag_type


def _version(value: bool) -> None:
    if value:
        from icl_search.version import __version__

        typer.echo(f"icl-search {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Find, export and serve the in-context (URIAL) prompt that aligns a base LLM."""


# Command modules register themselves on `app` when imported, in the order `icl-search --help`
# lists them (the workflow's), so the import sorter leaves this block alone.
# isort: off
from icl_search.cli import generate as _generate  # noqa: F401
from icl_search.cli import select as _select  # noqa: F401
from icl_search.cli import pool as _pool  # noqa: F401
from icl_search.cli import judge as _judge  # noqa: F401
from icl_search.cli import references as _references  # noqa: F401
from icl_search.cli import study as _study  # noqa: F401
from icl_search.cli import serve as _serve  # noqa: F401
from icl_search.cli import export as _export  # noqa: F401
from icl_search.cli import propose as _propose  # noqa: F401
# isort: on

# every command's `--help` ends with an example (one table: icl_search/cli/examples.py)
from icl_search.cli.examples import attach as _attach_examples

_attach_examples(app)
