"""The example pool: schema, loading, validation and importers (polars underneath)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


class PoolError(ValueError):
    """A pool file or row is invalid; the message names the file, line and field."""


@dataclass(frozen=True)
class Example:
    id: str
    query: str
    answer: str
    category: str = "general"
    tags: tuple[str, ...] = ()
    source: str = "project"
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tags"] = list(self.tags)
        return d


@dataclass
class Pool:
    examples: list[Example]
    path: Path | None = None

    def __post_init__(self) -> None:
        self._by_id = {e.id: e for e in self.examples}

    def __len__(self) -> int:
        return len(self.examples)

    def __iter__(self):
        return iter(self.examples)

    def __getitem__(self, id_: str) -> Example:
        return self._by_id[id_]

    @property
    def ids(self) -> list[str]:
        return [e.id for e in self.examples]

    @property
    def fingerprint(self) -> str:
        """Content hash of ids, queries and answers in order: changes whenever the pool does."""
        h = hashlib.sha256()
        for e in self.examples:
            h.update(json.dumps([e.id, e.query, e.answer], ensure_ascii=False).encode())
        return h.hexdigest()[:16]

    @classmethod
    def load(cls, path: str | Path) -> Pool:
        path = Path(path)
        if not path.exists():
            raise PoolError(f"{path}: pool file not found")
        examples = []
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise PoolError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
                examples.append(Example(
                    id=str(row["id"]), query=row["query"], answer=row["answer"],
                    category=row.get("category", "general"), tags=tuple(row.get("tags") or ()),
                    source=row.get("source", "project"),
                ))
        return cls(examples, path)
