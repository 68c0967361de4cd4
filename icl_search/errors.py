"""The one root of every error a user can cause. The CLI catches `IclSearchError` and prints
its message; library users can catch it too (in the spirit of Optuna's `OptunaError`)."""

from __future__ import annotations


def first_line(exc: BaseException, default: str | None = None) -> str:
    """The first line of an exception's message, for one-line error reports; `default` (the
    exception's type name unless given) when the message is empty."""
    fallback = type(exc).__name__ if default is None else default
    return (str(exc).strip().splitlines() or [fallback])[0]


def one_line(exc: BaseException) -> str:
    """The whole message of an exception on one line (white space folded), or its type name."""
    return " ".join(str(exc).split()) or type(exc).__name__


class IclSearchError(Exception):
    """Base class of icl-search's own errors: the message names the file, line or field."""
