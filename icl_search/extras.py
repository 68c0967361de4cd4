"""Optional dependencies (pyproject extras): one clear error when a feature's extra is missing.

`plots` (matplotlib, plotly) for `study report`, `postgres` (psycopg) for PostgreSQL storages,
`dashboard` (optuna-dashboard); `pip install 'icl-search[all]'` (what `make setup` does) has
them all.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from icl_search.errors import IclSearchError

#: import name -> (extra, what needs it)
EXTRAS = {
    "matplotlib": ("plots", "the report's PNG plots"),
    "plotly": ("plots", "the report's HTML plots"),
    "psycopg": ("postgres", "a postgresql+psycopg:// study storage"),
    "optuna_dashboard": ("dashboard", "optuna-dashboard"),
}


class MissingExtraError(IclSearchError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


def require(module: str) -> ModuleType:
    """`import module`, or a `MissingExtraError` naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        if top not in EXTRAS or (exc.name or "").split(".")[0] != top:
            raise
        extra, what = EXTRAS[top]
        raise MissingExtraError(f"{what} needs {top}, which is not installed: "
                                f"pip install 'icl-search[{extra}]' (or [all])") from None


def missing_for_url(url: str) -> MissingExtraError | None:
    """The error for a storage URL whose database driver is missing (else None)."""
    if url.startswith("postgresql"):
        try:
            require("psycopg")
        except MissingExtraError as exc:
            return exc
    return None
