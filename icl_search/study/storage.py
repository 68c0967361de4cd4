"""Where a study lives: opening (or, for read-only commands, only loading) an Optuna storage,
the lock that serialises trial asks across workers, and the heartbeats of trials in flight.

Every storage URL printed or put in an error goes through `redact` (icl_search.redact)."""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit

import optuna

from icl_search.errors import IclSearchError
from icl_search.redact import redact_url
from icl_search.study.config import StudyConfig
from icl_search.study.space import make_pruner, make_sampler

log = logging.getLogger("icl_search.study")
# We drive heartbeats ourselves around ask/tell (Optuna only does it inside Study.optimize);
# these two warnings say exactly that and would otherwise print on every batch.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


class StudyError(IclSearchError, RuntimeError):
    """The study cannot go on (e.g. the judge keeps failing coverage), or cannot be opened."""


def redact(url: str) -> str:
    """A storage URL without its credentials."""
    return redact_url(url) or ""


def _storage_error(url: str, exc: BaseException) -> StudyError:
    """One line naming the (redacted) URL; the driver's message without the password."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    try:
        secret = urlsplit(url).password
    except ValueError:
        secret = None
    first = first.replace(url, redact(url))
    if secret:
        # As a whole token only: a short password ("p") must not mangle every word it is in.
        first = re.sub(rf"(?<![\w]){re.escape(secret)}(?![\w])", "***", first)
    return StudyError(f"cannot open the study storage {redact(url)}: "
                      f"{type(exc).__name__}: {first}")


def make_storage(cfg: StudyConfig, url: str | None = None, *,
                 create: bool = True) -> optuna.storages.BaseStorage:
    """The RDB storage at `url` (default: the config's). `create=False` (read-only commands)
    refuses a SQLite file that does not exist instead of creating it."""
    url = url or cfg.storage_url
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        if not create and not path.is_file():
            raise StudyError(f"no study storage at {path} (from {cfg.source}): run "
                             f"`icl-search study run {cfg.source}` first")
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
    hb = cfg.optuna.heartbeat_seconds
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    else:
        kwargs["engine_kwargs"] = {"pool_pre_ping": True}
    try:
        with schema_lock(url):
            return optuna.storages.RDBStorage(
                url, heartbeat_interval=hb, grace_period=2 * hb,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=cfg.optuna.max_retry),
                **kwargs,
            )
    except Exception as exc:  # noqa: BLE001  (driver missing, bad URL, server down, bad credentials)
        from icl_search.extras import missing_for_url

        raise (missing_for_url(url) or _storage_error(url, exc)) from None


#: The PostgreSQL advisory lock under which a storage's schema is created: the two-int4 key
#: space, which never meets the one-bigint keys of `ask_lock`.
SCHEMA_LOCK_KEYS = (0x69636C2D, 0x73636865)  # "icl-", "sche"


@contextlib.contextmanager
def schema_lock(url: str) -> Iterator[None]:
    """On PostgreSQL, hold an advisory lock while Optuna creates (or checks) its tables:
    workers started at once on an empty database otherwise race in CREATE TABLE, and all but
    one die on `pg_type_typname_nsp_index` (a UniqueViolation). Other backends: nothing."""
    if not url.startswith("postgresql"):
        yield
        return
    import sqlalchemy as sa

    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_advisory_lock(:a, :b)"),
                         dict(zip("ab", SCHEMA_LOCK_KEYS, strict=True)))
            conn.commit()
            try:
                yield
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:a, :b)"),
                             dict(zip("ab", SCHEMA_LOCK_KEYS, strict=True)))
                conn.commit()
    finally:
        engine.dispose()


def feedback_objectives(cfg: StudyConfig) -> list[str]:
    """Extra objectives of a multi-objective study: one per configured feedback source."""
    f = cfg.feedback
    if not cfg.optuna.multi_objective or f is None:
        return []
    return [s for s in ("rules", "reward", "pairwise") if getattr(f, s) is not None]


def open_study(cfg: StudyConfig, storage_url: str | None = None) -> optuna.Study:
    """The config's study, created when it does not exist yet (`study run`/`worker`)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directions = ["maximize", "minimize"] if cfg.optuna.multi_objective else ["maximize"]
    extra = feedback_objectives(cfg)
    directions += ["maximize"] * len(extra)
    storage = make_storage(cfg, storage_url)
    study = optuna.create_study(
        study_name=cfg.name, storage=storage, sampler=make_sampler(cfg),
        pruner=make_pruner(cfg), directions=directions, load_if_exists=True,
    )
    if cfg.optuna.multi_objective:
        study.set_metric_names(["score", "context_tokens", *extra])
    else:
        study.set_metric_names(["score"])
    return study


def load_study(cfg: StudyConfig, storage_url: str | None = None) -> optuna.Study:
    """The config's study for a read-only command: never creates a storage or a study; an
    unknown name lists the studies the storage holds."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = storage_url or cfg.storage_url
    storage = make_storage(cfg, url, create=False)
    try:
        names = optuna.get_all_study_names(storage)
    except Exception as exc:  # noqa: BLE001  (any driver error becomes one message)
        raise _storage_error(url, exc) from None
    if cfg.name not in names:
        raise StudyError(f"no study named {cfg.name!r} in {redact(url)}; studies there: "
                         f"{', '.join(sorted(names)) or 'none'}")
    return optuna.load_study(study_name=cfg.name, storage=storage, sampler=make_sampler(cfg),
                             pruner=make_pruner(cfg))


@contextlib.contextmanager
def ask_lock(study: optuna.Study, url: str) -> Iterator[None]:
    """Serialise count-then-ask across workers so the trial budget is exact."""
    if url.startswith("sqlite:///"):
        from filelock import FileLock

        with FileLock(url[len("sqlite:///"):] + ".ask.lock"):
            yield
    elif url.startswith("postgresql"):
        import sqlalchemy as sa

        storage = study._storage
        engine = getattr(storage, "_backend", storage).engine  # RDBStorage under Optuna's cache
        key = int.from_bytes(study.study_name.encode()[:8].ljust(8, b"\0"), "big") >> 1
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
    else:
        yield


class Heartbeat:
    """Records a heartbeat for every trial this worker is evaluating."""

    def __init__(self, study: optuna.Study, interval: float):
        self.storage = study._storage
        self.interval = interval
        self.trial_ids: set[int] = set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def add(self, trial_id: int) -> None:
        with self._lock:
            self.trial_ids.add(trial_id)
        self.storage.record_heartbeat(trial_id)

    def discard(self, trial_id: int) -> None:
        with self._lock:
            self.trial_ids.discard(trial_id)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                ids = list(self.trial_ids)
            for tid in ids:
                try:
                    self.storage.record_heartbeat(tid)
                except Exception as exc:  # noqa: BLE001  (a transient storage error must not kill the run)
                    log.warning("heartbeat for trial %s failed: %s", tid, exc)
