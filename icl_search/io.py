"""File I/O shared by every room: atomic output (write to a temporary sibling, then rename, so
no reader ever sees a half-written file and an interrupted run leaves the previous file, or
none, in place) and the one JSONL-object reader whose errors name file and line.

Temporary files are named `.<name>.<pid>@<host>.<random>.tmp`. A writer killed before its
rename (kill -9, power loss) cannot remove its own; the next `atomic_write` of the same path
removes every sibling temp file whose writer is gone: its host is this one and its PID is no
longer running (a temp file of another host, say on a shared disk, is left alone: its PID
means nothing here). Temp files of the older naming without a PID are removed once they are
a day old.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8"
                 ) -> Iterator[IO[Any]]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_writer_tag()}.",
                               suffix=".tmp")
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _host() -> str:
    # Short and free of dots, so the tag parses back unambiguously.
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _writer_tag() -> str:
    return f"{os.getpid()}@{_host()}"


_TAGGED = re.compile(r"(\d+)@([0-9a-f]{8})\.[^.]+\.tmp")
# mkstemp's random part: 8 characters of letters, digits and underscores.
_UNTAGGED = re.compile(r"[A-Za-z0-9_]{8}\.tmp")
LEGACY_TEMP_AGE_S = 24 * 3600


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the temp files that writers of `path` left behind when they died; the removed
    paths. A temp file of a live writer (this process included) is never touched."""
    path = Path(path)
    prefix = f".{path.name}."
    removed = []
    try:
        siblings = [p for p in path.parent.iterdir()
                    if p.name.startswith(prefix) and p.name.endswith(".tmp")]
    except OSError:
        return removed
    host, now = _host(), time.time()
    for p in siblings:
        rest = p.name[len(prefix):]
        tagged = _TAGGED.fullmatch(rest)
        try:
            if tagged:
                stale = tagged.group(2) == host and not _pid_alive(int(tagged.group(1)))
            else:
                stale = bool(_UNTAGGED.fullmatch(rest)) and \
                    now - p.stat().st_mtime > LEGACY_TEMP_AGE_S
            if stale:
                p.unlink()
                removed.append(p)
        except OSError:  # gone already, or not ours to remove
            continue
    return removed


@contextmanager
def atomic_folder(target: str | os.PathLike) -> Iterator[Path]:
    """Build a folder in a hidden `.NAME.partial-PID` sibling, then rename it into place.

    The caller holds the folder's lock, so any other partial sibling is a killed run's and is
    removed first. On an error the partial folder is removed and `target` is left as it was.
    """
    import shutil

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = target.parent / f".{target.name}.partial-{os.getpid()}"
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> int:
    n = 0
    with atomic_write(path) as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_write(path) as fh:
        json.dump(obj, fh, ensure_ascii=False, indent=2)
        fh.write("\n")


def read_jsonl_objects(path: str | os.PathLike, error: type[Exception] = ValueError,
                       what: str = "file", problems: list[tuple[int, str]] | None = None
                       ) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield `(line_number, object)` for each non-blank line of a JSONL file.

    Every problem raises `error` with a message naming `path:line`: a missing file, a line
    that is not valid JSON or not UTF-8, or a line that is not a JSON object. With a
    `problems` list, a bad line is recorded there as `(line, message)` and skipped instead,
    so a validator can report every bad line at once (a missing file still raises).
    Line numbers are what an editor shows (only b"\n" ends a line); a UTF-8 byte-order mark
    on the first line is ignored.

    >>> for lineno, row in read_jsonl_objects("pools/eval/demo.jsonl"):  # doctest: +SKIP
    ...     print(lineno, row["query"])
    """
    path = Path(path)
    if not path.exists():
        raise error(f"{path}: {what} not found")
    if path.is_dir():
        raise error(f"{path}: expected a {what}, found a folder")
    def bad(lineno: int, message: str) -> None:
        if problems is None:
            raise error(f"{path}:{lineno}: {message}")
        problems.append((lineno, message))

    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.rstrip(b"\r\n").decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                bad(lineno, f"not UTF-8 text (byte {exc.start + 1})")
                continue
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                bad(lineno, f"not valid JSON ({exc.msg}, column {exc.colno})")
                continue
            if not isinstance(row, dict):
                bad(lineno, f"expected a JSON object, got {json_type(row)}")
                continue
            yield lineno, row


def json_type(v: Any) -> str:
    """A JSON value's type in JSON's words (for messages): null, boolean, number, text..."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "text"
    if isinstance(v, (list, tuple)):
        return "list"
    if isinstance(v, dict):
        return "object"
    return type(v).__name__
