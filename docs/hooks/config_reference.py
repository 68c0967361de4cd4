"""mkdocs hook: the study config reference, generated from the pydantic schema itself
(`icl_search.study.config.StudyConfig`), so a renamed or new field shows up in the docs
without anyone editing them. A page writes `<!-- CONFIG-REFERENCE -->` where the tables go."""

from __future__ import annotations

import re
import sys
import typing
from pathlib import Path

MARKER = "<!-- CONFIG-REFERENCE -->"


def on_config(config):
    # the tree's own package, not whichever copy the environment has installed
    root = str(Path(config.config_file_path).resolve().parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    return config


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER not in markdown:
        return markdown
    from icl_search.study.config import StudyConfig

    return markdown.replace(MARKER, "\n".join(_tables(StudyConfig)))


def _model_of(annotation):
    from pydantic import BaseModel

    for t in (annotation, *typing.get_args(annotation)):
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t
    return None


def _type(annotation) -> str:
    text = getattr(annotation, "__name__", None) if not typing.get_args(annotation) else None
    text = text or str(annotation)
    text = re.sub(r"\b(typing|icl_search\.[\w.]+|pathlib)\.", "", text)
    return text.replace("NoneType", "None").replace("|", "\\|")


def _default(field) -> str:
    from pydantic_core import PydanticUndefined

    if field.is_required():
        return "required"
    value = field.default_factory() if field.default_factory is not None else field.default
    if value is PydanticUndefined or hasattr(value, "model_fields"):
        return ""
    return f"`{value!r}`"


def _constraints(field) -> str:
    out = []
    for m in field.metadata:
        for name in ("ge", "gt", "le", "lt", "min_length", "max_length", "pattern"):
            if getattr(m, name, None) is not None:
                value = getattr(m, name)
                if name == "pattern":
                    out.append(f"matches `{value}`")
                else:
                    sign = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}.get(name, name + " ")
                    out.append(f"{sign}{value}")
    return ", ".join(out)


def _tables(model, prefix: str = "") -> list[str]:
    rows, nested = [], []
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        sub = _model_of(field.annotation)
        if sub is not None:
            nested.append((f"{prefix}{name}", sub))
            continue
        desc = (field.description or "").replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `{name}` | {_type(field.annotation)} | {_default(field)} | "
                    f"{_constraints(field)} | {desc} |")
    title = f"`[{prefix.rstrip('.')}]`" if prefix else "top level"
    out = [f"### {title}", "", "| field | type | default | bounds | meaning |",
           "| --- | --- | --- | --- | --- |", *rows, ""] if rows else []
    for name, sub in nested:
        out += _tables(sub, f"{name}.")
    return out
