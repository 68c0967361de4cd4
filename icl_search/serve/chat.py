"""The chat format: OpenAI-style `messages` split into what a URIAL prompt needs (request
system texts, earlier user/assistant turns, the last user message as the query).

The bundle renders a query with optional system texts and turns (`Bundle.prepare`); turning a
chat request into those parts is the server's concern and lives here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from icl_search.errors import IclSearchError

if TYPE_CHECKING:
    from icl_search.bundle import Bundle, Rendered, SystemMode
    from icl_search.prompt import Budget
    from icl_search.selection import Selected


class ConversationError(IclSearchError, ValueError):
    """A chat `messages` list cannot be rendered; `param` names the offending message."""

    def __init__(self, message: str, param: str | None = "messages"):
        super().__init__(message)
        self.param = param


@dataclass
class Conversation:
    """A chat request split the way a URIAL prompt needs it."""

    system: list[str]
    turns: list[tuple[str, str]]
    query: str

    @classmethod
    def from_messages(cls, messages: Sequence[Any]) -> Conversation:
        """OpenAI-style messages -> request system texts, earlier (user, assistant) turns, and
        the last user message as the query.

        `system` and `developer` messages (anywhere) are collected in order. Consecutive user
        (or assistant) messages are joined with a blank line. The conversation must end with a
        user message, and an assistant message must follow a user message.
        """
        if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)) \
                or not messages:
            raise ConversationError("messages: expected a non-empty list of messages")
        system: list[str] = []
        blocks: list[tuple[str, list[str]]] = []  # (role, texts), roles alternate
        for i, m in enumerate(messages):
            if hasattr(m, "model_dump"):
                m = m.model_dump()
            if not isinstance(m, Mapping):
                raise ConversationError(f"messages[{i}]: expected an object with role and content",
                                        f"messages[{i}]")
            role = m.get("role")
            text = content_text(m.get("content"), f"messages[{i}].content")
            if role in ("system", "developer"):
                system.append(text)
                continue
            if role not in ("user", "assistant"):
                raise ConversationError(
                    f"messages[{i}].role: {role!r} is not supported; accepted: system, developer, "
                    "user, assistant", f"messages[{i}].role")
            if role == "assistant" and not blocks:
                raise ConversationError(
                    f"messages[{i}]: an assistant message must follow a user message",
                    f"messages[{i}]")
            if blocks and blocks[-1][0] == role:
                blocks[-1][1].append(text)
            else:
                blocks.append((role, [text]))
        if not blocks or blocks[-1][0] != "user":
            raise ConversationError("messages: the last message (other than system) must be "
                                    "from the user")
        texts = ["\n\n".join(t) for _, t in blocks]
        turns = [(texts[j], texts[j + 1]) for j in range(0, len(texts) - 1, 2)]
        query = texts[-1]
        if not query.strip():
            raise ConversationError("messages: the last user message is empty",
                                    f"messages[{len(messages) - 1}].content")
        return cls(system, turns, query)

    def prepare(self, bundle: Bundle, *, budget: Budget | None = None,
                max_tokens: int | None = None, system_mode: SystemMode = "append",
                selected: Sequence[Selected] | None = None) -> Rendered:
        """The bundle's prompt for this conversation (see `Bundle.prepare`; `selected`: the
        examples already chosen for the query, by a batch)."""
        return bundle.prepare(self.query, system=self.system, turns=self.turns, budget=budget,
                              max_tokens=max_tokens, system_mode=system_mode,
                              selected=selected)


def content_text(content: Any, param: str) -> str:
    """A message's `content`: a string, or a list of text parts joined by newlines."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if isinstance(part, Mapping) and part.get("type") == "text" \
                    and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
                raise ConversationError(
                    f"{param}[{j}]: content part of type {kind!r} is not supported (text only)",
                    f"{param}[{j}]")
        return "\n".join(texts)
    raise ConversationError(f"{param}: expected a string or a list of text parts", param)


def render_messages(bundle: Bundle, messages: Sequence[Any], *,
                    system_mode: SystemMode = "append", budget: Budget | None = None,
                    max_tokens: int | None = None) -> str:
    """The prompt a served chat request gets (without the server's budget: the whole set)."""
    return Conversation.from_messages(messages).prepare(
        bundle, budget=budget, max_tokens=max_tokens, system_mode=system_mode).prompt


__all__ = ["Conversation", "ConversationError", "content_text", "render_messages"]
