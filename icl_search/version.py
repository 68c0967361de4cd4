"""The package's version, on the ground floor (as Optuna's `optuna/version.py`): any room may
import it without reaching up to the package root. One source of truth: the installed
distribution's metadata, i.e. pyproject.toml."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("icl-search")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
