"""What `icl-search compare` reads: each study given on the command line (a config `.toml`, or
a study name in `--storage`), opened read-only, with its base model's name, kind and size."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from icl_search.errors import IclSearchError


class CompareError(IclSearchError, ValueError):
    """A study or folder given to `compare` cannot be read (one message naming it)."""


@dataclass(frozen=True)
class ModelInfo:
    """A study's generator model as the table names it."""

    name: str
    kind: str  # "base", "instruct" or "?"
    size: str  # "270M", "8B", "0.6M", or "?"
    how: str  # where kind and size come from: "registry", "weights", "name"

    @property
    def label(self) -> str:
        return f"{self.name} ({self.size}, {self.kind})"


@dataclass
class Source:
    """One study of the table: its storage, its config when known, its model."""

    arg: str
    name: str
    study: optuna.Study
    url: str
    cfg: Any  # StudyConfig | None (a study named in a storage: its stored config path)
    model: ModelInfo

    @property
    def export_info(self) -> dict[str, Any]:
        from icl_search.study.export import EXPORT_ATTR

        return self.study.user_attrs.get(EXPORT_ATTR) or {}


def open_sources(args: list[str], storage: str | None) -> list[Source]:
    """Every argument opened, before any model loads; the first bad one is one message."""
    if not args:
        raise CompareError("give at least one study: a config .toml, or a name with --storage")
    out = [open_source(a, storage) for a in args]
    names = [s.name for s in out]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise CompareError(f"study {dup!r} is given twice; each row is one study")
    return out


def open_source(arg: str, storage: str | None) -> Source:
    from icl_search.study import ConfigError, load_config, load_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if arg.endswith(".toml") or Path(arg).is_file():
        if not Path(arg).is_file():
            raise CompareError(f"{arg}: no such study config")
        try:
            cfg = load_config(arg)
        except ConfigError as exc:
            raise CompareError(str(exc)) from None
        url = storage or cfg.storage_url
        if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).is_file():
            raise CompareError(f"{arg}: study {cfg.name!r} has no storage yet "
                               f"({url[len('sqlite:///'):]}): run `icl-search study run {arg}`")
        study = load_study(cfg, url)
    else:
        study, url = _by_name(arg, storage)
        cfg = _stored_config(study)
    return Source(arg, study.study_name, study, url, cfg, model_info(study, cfg))


def _by_name(name: str, storage: str | None) -> tuple[optuna.Study, str]:
    from icl_search.study.storage import redact

    if not storage:
        raise CompareError(f"{name!r}: not a config file (.toml); a study name needs --storage "
                           "URL")
    if storage.startswith("sqlite:///") and not Path(storage[len("sqlite:///"):]).is_file():
        raise CompareError(f"--storage: no study storage at {storage[len('sqlite:///'):]}")
    try:
        names = optuna.get_all_study_names(storage)
    except Exception as exc:  # noqa: BLE001  (any driver error becomes one message)
        raise CompareError(f"--storage {redact(storage)}: {type(exc).__name__}: {exc}") from None
    if name not in names:
        raise CompareError(f"no study named {name!r} in {redact(storage)}; studies there: "
                           f"{', '.join(sorted(names)) or 'none'}")
    return optuna.load_study(study_name=name, storage=storage), storage


def _stored_config(study: optuna.Study):
    """The config a study was run from (its path is stored), when it is still there."""
    from icl_search.study import ConfigError, load_config
    from icl_search.study.export import EXPORT_ATTR

    path = (study.user_attrs.get(EXPORT_ATTR) or {}).get("config_path")
    if not path or not Path(path).is_file():
        return None
    try:
        return load_config(path)
    except ConfigError:
        return None


# -- the model -----------------------------------------------------------------------------
_INSTRUCT = re.compile(r"instruct|chat|[-_]it\b|sft|rlhf|dpo", re.IGNORECASE)
_SIZE = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)\s*([BbMm])(?![A-Za-z])")


def model_info(study: optuna.Study, cfg) -> ModelInfo:
    """Name, kind and size: from the models registry (`icl_search.models`), else counted from
    the weights of a local folder, else read from the name (`Llama-3.1-8B`, `...-Instruct`)."""
    from icl_search.engines import parse_spec
    from icl_search.models import known_model
    from icl_search.study.export import EXPORT_ATTR

    info = study.user_attrs.get(EXPORT_ATTR) or {}
    engine = info.get("engine") or (cfg.model.engine if cfg is not None else "?")
    try:
        kind, target, _ = parse_spec(engine)
    except Exception:  # noqa: BLE001  (an engine spec from an older version: named as stored)
        kind, target = "?", engine
    model = target if kind == "vllm" else engine
    known = known_model(model) if kind == "vllm" else None
    if known is not None:
        name, entry = known
        return ModelInfo(name, entry.kind, entry.params, "registry")
    name = Path(model).name if kind == "vllm" else model
    kind_ = "instruct" if _INSTRUCT.search(model) else "base"
    count = _param_count(Path(model)) if kind == "vllm" else None
    if count is not None:
        return ModelInfo(name, kind_, _human(count), "weights")
    m = _SIZE.search(name)
    size = f"{m.group(1)}{m.group(2).upper()}" if m else "?"
    return ModelInfo(name, kind_, size, "name")


def _param_count(folder: Path) -> int | None:
    """Parameters stored in a local folder's safetensors files (headers only)."""
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files:
        return None
    from safetensors import safe_open

    total = 0
    for f in files:
        with safe_open(str(f), framework="np") as fh:
            for k in fh.keys():  # noqa: SIM118  (safe_open is no mapping)
                n = 1
                for d in fh.get_slice(k).get_shape():
                    n *= d
                total += n
    return total


def _human(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(n)
