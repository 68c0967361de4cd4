"""`Bundle`: an exported context as one JSON file (the layout is in the package docstring):
built from a trial, loaded with strict checks, and rendered or selected per query."""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from icl_search.engines.base import SamplingParams
from icl_search.io import write_json
from icl_search.prompt import Budget, Fit, Template
from icl_search.selection import Selected, SelectionConfig

if TYPE_CHECKING:
    from icl_search.index import Embedder
    from icl_search.selection import Selector
from icl_search.bundle.parts import (
    NO_URIAL_FILE,
    SCHEMA_VERSION,
    SYSTEM_MODES,
    BundleError,
    BundleExample,
    ContextWindowError,
    Provenance,
    Rendered,
    Retrieval,
    Scores,
    SystemMode,
    _first_error,
    _rel,
)
from icl_search.bundle.portable import check_pool


# -- the bundle ----------------------------------------------------------------------------
class Bundle(BaseModel):
    """An exported prompt context. Build with `Bundle.create`, read with `Bundle.load`.

    >>> b = Bundle.load("best.json")
    >>> b.select("How do I sort a list?")     # the examples for this query
    >>> b.render("How do I sort a list?")     # the exact prompt string
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    schema_version: int = SCHEMA_VERSION
    model: str = Field(description="base model name or path, as given to the study")
    template: Template = Field(default_factory=Template)
    system: str = ""
    mode: Literal["fixed", "retrieval"]
    #: Served with this bundle, a client may not replace the preamble or bypass it (`raw`).
    lock_context: bool = False
    examples: list[BundleExample] | None = None
    retrieval: Retrieval | None = None
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    scores: Scores = Field(default_factory=Scores)
    provenance: Provenance = Field(default_factory=Provenance)

    # The folder relative paths resolve against: the bundle file's folder once loaded or saved.
    _base: Path = PrivateAttr(default_factory=Path.cwd)
    _path: Path | None = PrivateAttr(default=None)
    _selector: Selector | None = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    # -- (de)serialisation of the non-pydantic parts ----------------------------------------
    @field_validator("template", mode="before")
    @classmethod
    def _template(cls, v: Any) -> Template:
        return v if isinstance(v, Template) else Template.from_dict(v)

    @field_validator("sampling", mode="before")
    @classmethod
    def _sampling(cls, v: Any) -> SamplingParams:
        if isinstance(v, SamplingParams):
            return v
        if not isinstance(v, Mapping):
            raise ValueError("expected an object of sampling parameters")  # noqa: TRY004
        known = set(SamplingParams.__dataclass_fields__)
        unknown = set(v) - known
        if unknown:
            raise ValueError(f"unknown field(s) {sorted(unknown)}; accepted: {', '.join(known)}")
        return SamplingParams(**v)

    @field_serializer("template")
    def _dump_template(self, t: Template) -> dict[str, Any]:
        return t.to_dict()

    @field_serializer("sampling")
    def _dump_sampling(self, s: SamplingParams) -> dict[str, Any]:
        return s.to_dict()

    @model_validator(mode="after")
    def _check_mode(self) -> Bundle:
        if self.schema_version > SCHEMA_VERSION or self.schema_version < 1:
            raise ValueError(f"schema_version: {self.schema_version} is not supported "
                             f"(this version of icl-search reads 1 to {SCHEMA_VERSION})")
        if self.mode == "fixed":
            if self.examples is None:
                raise ValueError("examples: a fixed bundle needs its examples inline")
            if self.retrieval is not None:
                raise ValueError("retrieval: a fixed bundle has no retrieval settings")
        else:
            if self.retrieval is None:
                raise ValueError("retrieval: a retrieval bundle needs its retrieval settings")
            if self.examples is not None:
                raise ValueError("examples: a retrieval bundle selects its examples per query; "
                                 "use mode 'fixed' for an inline set")
        return self

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        *,
        model: str | os.PathLike,
        system: str,
        template: Template | Mapping[str, Any] | None = None,
        examples: Sequence[Any] | None = None,
        selection: SelectionConfig | Mapping[str, Any] | None = None,
        pool_path: str | os.PathLike | None = None,
        index_dir: str | os.PathLike | None = None,
        embedder: str | os.PathLike | Embedder | None = None,
        sampling: SamplingParams | Mapping[str, Any] | None = None,
        scores: Scores | Mapping[str, Any] | None = None,
        provenance: Provenance | Mapping[str, Any] | None = None,
        bundle_path: str | os.PathLike | None = None,
        lock_context: bool = False,
    ) -> Bundle:
        """Build a bundle (the study's export calls this, then `save`).

        Give exactly one of:

        - `examples`: a fixed set, in prompt order (pool `Example`s, `Selected`s, mappings with
          id/query/answer/category, or `(query, answer)` pairs); stored inline, mode "fixed".
        - `selection` (a `SelectionConfig` or its dict) with `pool_path` (and optionally
          `index_dir`, default `<pool>.index/`, and `embedder`, default all-MiniLM-L6-v2):
          mode "retrieval"; the pool's fingerprint is recorded and the fixed_ids' examples are
          copied inline as anchors. A "fixed" strategy in "given" order needs no retrieval and
          becomes a fixed bundle with its examples read from the pool.

        `sampling`: the decoding parameters the trial used. `scores`: keys overall, aspects
        ({aspect: mean}), n_queries, judge, coverage (others kept). `provenance`: keys study,
        trial, storage (credentials are stripped here), config_hash (others kept); versions
        and creation time are filled in. `bundle_path`: where the file will be saved, for the
        relative pool/index paths (default: the current folder; `save` re-bases them anyway).
        `lock_context`: a server of this bundle refuses requests that replace or bypass its
        context (see `icl_search.serve`).
        """
        base = Path(bundle_path).resolve().parent if bundle_path is not None else Path.cwd()
        tmpl = template if isinstance(template, Template) else Template.from_dict(
            dict(template) if template else None)
        data: dict[str, Any] = {
            "model": str(model), "template": tmpl, "system": system,
            "sampling": sampling if sampling is not None else SamplingParams(),
            "scores": scores if scores is not None else {},
            "provenance": provenance if provenance is not None else {},
            "lock_context": bool(lock_context),
        }
        if (examples is None) == (selection is None):
            raise BundleError("Bundle.create: give exactly one of examples= (a fixed set) or "
                              "selection= (per-query retrieval)")
        if selection is not None:
            config = selection if isinstance(selection, SelectionConfig) \
                else SelectionConfig.model_validate(dict(selection))
            if pool_path is None:
                raise BundleError("Bundle.create: selection= needs pool_path= (the pool the "
                                  "examples are selected from)")
            from icl_search.pool import Pool

            pool = Pool.load(pool_path)
            missing = [i for i in config.fixed_ids if i not in pool]
            if missing:
                raise BundleError(f"selection.fixed_ids: not in the pool {pool_path}: {missing}")
            anchors = [BundleExample.of(pool[i]) for i in config.fixed_ids]
            if config.strategy == "fixed" and config.effective_order == "given":
                examples = anchors
            else:
                from icl_search.index import Embedder, PoolIndex

                emb = embedder if isinstance(embedder, Embedder) else Embedder(embedder, cache=False)
                emb_path = Path(emb.location)
                data["mode"] = "retrieval"
                data["retrieval"] = Retrieval(
                    selection=config, anchors=anchors, embedder=emb.id,
                    embedder_path=_rel(emb_path, base)
                    if emb.id.startswith("local:") and emb_path.is_dir() else None,
                    pool=_rel(pool_path, base), pool_fingerprint=pool.fingerprint,
                    index=_rel(index_dir if index_dir is not None
                               else PoolIndex.default_dir(pool_path), base),
                )
        if examples is not None:
            data["mode"] = "fixed"
            data["examples"] = [BundleExample.of(e, i) for i, e in enumerate(examples)]
            ids = [e.id for e in data["examples"]]
            if len(set(ids)) != len(ids):
                raise BundleError("examples: an id is listed twice")
        try:
            bundle = cls.model_validate(data)
        except ValidationError as exc:
            raise BundleError(f"Bundle.create: {_first_error(exc)}") from None
        bundle._base = base
        return bundle

    @classmethod
    def load(cls, path: str | os.PathLike) -> Bundle:
        """Read and validate a bundle file; needs neither a GPU nor the model nor the pool."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise BundleError(f"{path}: no such bundle file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise BundleError(f"{path}: cannot read the bundle ({exc})") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BundleError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg})") \
                from None
        if not isinstance(data, dict):
            raise BundleError(f"{path}: a bundle is a JSON object, got {type(data).__name__}")
        version = data.get("schema_version")
        if version is None:
            raise BundleError(f"{path}: schema_version: missing (is this an icl-search bundle?)")
        if not isinstance(version, int) or isinstance(version, bool):
            raise BundleError(f"{path}: schema_version: expected an integer, got {version!r}")
        if version > SCHEMA_VERSION:
            raise BundleError(
                f"{path}: schema_version {version} is newer than this icl-search reads "
                f"({SCHEMA_VERSION}); upgrade icl-search to load it")
        if "template" not in data:  # a default would render prompts the study never scored
            raise BundleError(f"{path}: template: missing (every exported bundle records the "
                              "template its prompts were searched with)")
        try:
            bundle = cls.model_validate(data)
        except ValidationError as exc:
            raise BundleError(f"{path}: {_first_error(exc)}") from None
        bundle._base = path.resolve().parent
        bundle._path = path
        return bundle

    def save(self, path: str | os.PathLike) -> Path:
        """Write the bundle atomically. Pool, index and embedder paths are re-based so they
        still point at the same files from the new location."""
        path = Path(path)
        new_base = path.resolve().parent
        out = self
        if self.retrieval is not None and new_base != self._base.resolve():
            r = self.retrieval
            moved = {"pool": _rel(self._base / r.pool, new_base),
                     "index": _rel(self._base / r.index, new_base)}
            if r.embedder_path is not None:
                moved["embedder_path"] = _rel(self._base / r.embedder_path, new_base)
            out = self.model_copy(update={"retrieval": r.model_copy(update=moved)})
        write_json(path, out.to_dict())
        if out is not self:
            self.retrieval = out.retrieval
        self._base = new_base
        self._path = path
        self._selector = None
        return path

    def to_dict(self) -> dict[str, Any]:
        d = self.model_dump(mode="json")
        # Only the key of the bundle's own mode is written: "examples" or "retrieval".
        d.pop("retrieval" if self.mode == "fixed" else "examples")
        return d

    # -- paths -------------------------------------------------------------------------------
    @property
    def path(self) -> Path | None:
        """The file this bundle was loaded from or last saved to."""
        return self._path

    def _where(self) -> str:
        return str(self._path) if self._path is not None else "bundle"

    def _resolve(self, rel: str) -> Path:
        # normpath, not resolve(): messages show the path the user knows, symlinks included.
        return Path(os.path.normpath(self._base / rel))

    @property
    def pool_path(self) -> Path | None:
        return None if self.retrieval is None else self._resolve(self.retrieval.pool)

    @property
    def index_dir(self) -> Path | None:
        return None if self.retrieval is None else self._resolve(self.retrieval.index)

    # -- selection ---------------------------------------------------------------------------
    def selector(self) -> Selector:
        """The retrieval bundle's `Selector`, loaded on first use (pool, embedder, index).

        Refuses a pool whose fingerprint differs from the one recorded at export: the
        examples the study scored are no longer the ones the index would return.
        """
        if self.retrieval is None:
            raise BundleError(f"{self._where()}: a fixed bundle has no selector")
        with self._lock:
            if self._selector is None:
                self._selector = self._load_selector()
            return self._selector

    def check_files(self) -> None:
        """A retrieval bundle's pool (present, unchanged since export) and local embedder
        folder, checked without loading any model (`icl_search.bundle.portable.check_pool`)."""
        check_pool(self)

    def _load_selector(self) -> Selector:
        from icl_search.index import Embedder, EmbedderError, PoolIndex, StaleIndexError
        from icl_search.selection import SelectionError, Selector

        r = self.retrieval
        assert r is not None
        pool = check_pool(self)
        location = str(self._resolve(r.embedder_path)) if r.embedder_path else r.embedder
        emb = Embedder(location)
        if emb.id != r.embedder:
            raise BundleError(f"{self._where()}: retrieval.embedder: {location} is now "
                              f"{emb.id}, the bundle was made with {r.embedder}")
        directory = self._resolve(r.index)
        try:
            try:
                # The pool is verified above, so a stale index can only be missing or built by
                # another embedder: rebuilding it gives exactly the index the study used.
                index = PoolIndex.load(directory, pool, emb, on_stale="rebuild")
            except OSError:
                index = PoolIndex.build(pool, emb)
            return Selector(index, r.selection)
        except (EmbedderError, StaleIndexError, SelectionError) as exc:
            raise BundleError(f"{self._where()}: retrieval: {exc}") from None

    def select(self, query: str, *, exclude_ids: Iterable[str] = ()) -> list[Selected]:
        """The examples for `query`, in prompt order (the last one sits next to the query).

        Fixed bundles return their inline set (`score` is NaN: a fixed set is not scored
        against the query; `exclude_ids` still applies). Retrieval bundles run the stored
        selection (with its leakage guard) against the pool's index.
        """
        if self.mode == "fixed":
            banned = set(exclude_ids)
            return [Selected(e.to_example(), math.nan, anchor=True)
                    for e in self.examples or () if e.id not in banned]
        return self.selector().select(query, exclude_ids=exclude_ids)

    # -- rendering ---------------------------------------------------------------------------
    def system_text(self, extra: Sequence[str] = (), mode: SystemMode = "append") -> str:
        """The preamble with request system texts appended (after a blank line) or, with
        `mode="replace"`, the request's system texts instead of the preamble."""
        if mode not in SYSTEM_MODES:
            raise BundleError(f"system mode {mode!r} is not one of {', '.join(SYSTEM_MODES)}")
        extra = [t.strip("\n") for t in extra if t.strip()]
        if mode == "replace" and extra:
            return "\n\n".join(extra)
        return "\n\n".join([self.system.rstrip("\n"), *extra]) if self.system else \
            "\n\n".join(extra)

    def prepare(
        self,
        query: str,
        *,
        system: Sequence[str] = (),
        turns: Sequence[tuple[str, str]] = (),
        budget: Budget | None = None,
        max_tokens: int | None = None,
        system_mode: SystemMode = "append",
        exclude_ids: Iterable[str] = (),
        selected: Sequence[Selected] | None = None,
    ) -> Rendered:
        """The prompt for a query, optionally inside a conversation.

        It renders as the preamble (+ the request's `system` texts, see `system_text`) +
        the examples selected for `query` + the earlier `turns` (user, assistant) as further
        query/answer blocks + `query`. (OpenAI-style chat messages are split into these parts
        on the serving side: `icl_search.serve.chat.Conversation`.)

        With a `budget`, examples are dropped from the front until the prompt plus
        `max_tokens` (default: the bundle's) fits; a conversation that still does not fit
        raises `ContextWindowError` (earlier turns are never dropped silently).

        `selected`: the examples already chosen for `query` (`select`'s answer, e.g. from one
        `selector().select_many` over a batch of queries); default: `select(query)`.
        """
        turns = list(turns)
        system_texts = self.system_text(system, system_mode)
        examples = self.select(query, exclude_ids=exclude_ids) if selected is None else selected
        if budget is None:
            prompt = self.template.render_conversation(system_texts, examples, turns, query)
            return Rendered(prompt, examples, [], None, query)
        n_tokens = self.sampling.max_tokens if max_tokens is None else max_tokens
        fit: Fit = budget.fit(self.template, system_texts, list(examples) + turns,
                              query, n_tokens)
        if not fit.ok or len(fit.dropped) > len(examples):
            if fit.ok:
                bare = self.template.render_conversation(system_texts, [], turns, query)
                need = budget.count(bare)
                why = (f"the conversation takes {need} tokens without any example, and with "
                       f"max_tokens={n_tokens} that exceeds the context window of "
                       f"{budget.context_window} tokens")
            else:
                why = fit.error or "prompt does not fit"
            raise ContextWindowError(why)
        kept = fit.kept[: len(fit.kept) - len(turns)]
        return Rendered(fit.prompt or "", kept, fit.dropped, fit.prompt_tokens, query)

    def render(self, query: str, *, budget: Budget | None = None,
               max_tokens: int | None = None) -> str:
        """The exact prompt for `query`: `Template.render(system, select(query), query)`, the
        function the study evaluates with (and `Budget.fit` when a budget is given)."""
        return self.prepare(query, budget=budget, max_tokens=max_tokens).prompt

    def to_urial(self) -> str:
        """The context as a prompt file in the URIAL repository's format (fixed bundles only):
        the preamble and example blocks, to which URIAL appends each query block."""
        if self.mode != "fixed":
            raise BundleError(f"{self._where()}: to_urial: {NO_URIAL_FILE}")
        return self.template.render_context(self.system, self.examples or [])

    def describe(self) -> str:
        """One line: model, mode, examples, score."""
        if self.mode == "fixed":
            what = f"fixed set of {len(self.examples or [])} examples"
        else:
            s = self.retrieval.selection  # type: ignore[union-attr]
            what = f"{s.strategy} retrieval, k={s.k}, from {self.retrieval.pool}"  # type: ignore[union-attr]
        score = "" if self.scores.overall is None else f", score {self.scores.overall:.3f}"
        return f"{self.model}: {what}{score}"
