"""One way to open a chat model through `dspy.LM` (the chat judge, the proposer, `references
build`): the endpoint, the key and the retries, with DSPy's own response cache off."""

from __future__ import annotations

import os
from typing import Any


def dspy_lm(model: str, api_base: str | None = None, *, api_key: str | None = None,
            timeout: float = 120.0, num_retries: int = 2):
    """`dspy.LM(model)` at `api_base` (an OpenAI-compatible endpoint) or the provider's own.
    A local endpoint (`vllm serve`) asks for no key: without one given or in OPENAI_API_KEY,
    a placeholder is sent. The callers keep their own caches (parsed verdicts, proposals,
    references), so a repeated request reaches the model rather than an old answer."""
    import dspy

    kwargs: dict[str, Any] = {"timeout": timeout}
    if api_base:
        kwargs["api_base"] = api_base
    if api_key:
        kwargs["api_key"] = api_key
    elif api_base and not os.environ.get("OPENAI_API_KEY"):
        kwargs["api_key"] = "unused"
    return dspy.LM(model, cache=False, num_retries=num_retries, **kwargs)
