"""The proposer spec string (`[propose] spec` of a study config), parsed once into a typed
`ProposerSpec`. It lives on the ground floor, beside the errors it raises, so the study config
checks a spec without reaching up into `icl_search.propose`, which builds the proposer from it
(`icl_search.propose.proposer.make_proposer`)."""

from __future__ import annotations

from dataclasses import dataclass

from icl_search.errors import IclSearchError

KINDS = ("dspy", "openai", "self", "vllm")


class ProposeError(IclSearchError, RuntimeError):
    """A proposer spec is invalid, its endpoint is dead, or a round cannot go on."""


@dataclass(frozen=True)
class ProposerSpec:
    kind: str  # one of KINDS
    target: str = ""  # dspy: provider/model; openai: URL[#model]; vllm: name or path
    api_base: str | None = None

    @property
    def text(self) -> str:
        if self.kind == "self":
            return "self"
        return f"{self.kind}:{self.target}" + (f"@{self.api_base}" if self.api_base else "")


def parse_proposer_spec(spec: str) -> ProposerSpec:
    """`spec` -> ProposerSpec; a wrong one names the accepted forms."""
    spec = spec.strip()
    if spec == "self":
        return ProposerSpec("self")
    kind, sep, rest = spec.partition(":")
    if sep and kind == "dspy":
        model, _, base = rest.partition("@")
        if "/" in model and model.split("/", 1)[1]:
            return ProposerSpec("dspy", model, base or None)
    elif sep and kind == "openai" and rest.startswith(("http://", "https://")):
        return ProposerSpec("openai", rest)
    elif sep and kind == "vllm" and rest:
        return ProposerSpec("vllm", rest)
    raise ProposeError(
        f"proposer spec {spec!r}: expected 'self' (the study's base model), "
        "'dspy:<provider>/<model>[@<api_base>]' (e.g. 'dspy:openai/gpt-4o-mini'), "
        "'openai:http(s)://host:port/v1[#model]' or 'vllm:NAME_OR_PATH'")
