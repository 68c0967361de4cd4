"""The one root of every error a user can cause. The CLI catches `IclSearchError` and prints
its message; library users can catch it too (in the spirit of Optuna's `OptunaError`)."""

from __future__ import annotations


class IclSearchError(Exception):
    """Base class of icl-search's own errors: the message names the file, line or field."""
