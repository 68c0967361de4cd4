"""The proposer LM, picked by one spec string, and the meta-prompts it is asked through.

Specs:

- `dspy:<provider>/<model>[@<api_base>]`: a chat model through `dspy.LM` and a DSPy signature
  (`Write`: task -> text), e.g. `dspy:openai/gpt-4o-mini`;
- `openai:http://host:port/v1[#model]`: raw completions from an OpenAI-compatible server
  (`icl_search.engines.OpenAIEngine`), asked through the URIAL-style meta-prompt;
- `self`: the study's own base model, through the same URIAL-style meta-prompt;
- `vllm:NAME_OR_PATH`: another base model in-process, likewise.

The task texts (what a preamble proposal or a restyle is asked to do) are data files under
`templates/`; a proposal's provenance records the sha256 of the files it was asked with.
Every answer goes through the cache, keyed by proposer id, prompt and length: a resumed round
asks nothing twice.
"""

from __future__ import annotations

import hashlib
import os
import string
from collections.abc import Sequence
from functools import cache
from pathlib import Path

from icl_search.engines.dspy_lm import dspy_lm
from icl_search.proposer_spec import ProposeError, parse_proposer_spec

TEMPLATES = Path(__file__).with_name("templates")
@cache
def template_text(name: str) -> str:
    return (TEMPLATES / name).read_text(encoding="utf-8")


def fill(name: str, **values: str) -> str:
    """A task template with its `$fields` filled (string.Template: braces in data are safe)."""
    return string.Template(template_text(name)).substitute(values)


def meta_hash(*names: str) -> str:
    h = hashlib.sha256()
    for n in names:
        h.update(template_text(n).encode())
    return h.hexdigest()[:16]


class Proposer:
    """Writes one text per task; `None` where the model gave no answer (a failed request)."""

    id: str
    meta_files: tuple[str, ...] = ()

    def __init__(self, cache=None):
        self.cache = cache
        self.calls = 0  # model requests actually sent (cache misses)

    def meta_hash(self, task_file: str) -> str:
        return meta_hash(task_file, *self.meta_files)

    def write(self, tasks: Sequence[str], *, max_tokens: int = 512,
              progress: bool = False) -> list[str | None]:
        from icl_search.cache import cache_key

        keys = [cache_key("propose", self.id, t, max_tokens) for t in tasks]
        found = self.cache.get_many(keys) if self.cache is not None else {}
        todo = [i for i, k in enumerate(keys) if k not in found]
        fresh = self._write([tasks[i] for i in todo], max_tokens, progress) if todo else []
        self.calls += len(todo)
        if self.cache is not None:
            self.cache.put_many((keys[i], t) for i, t in zip(todo, fresh) if t is not None)
        out = [found.get(k) for k in keys]
        for i, t in zip(todo, fresh):
            out[i] = t
        return out

    def _write(self, tasks: list[str], max_tokens: int, progress: bool) -> list[str | None]:
        raise NotImplementedError


class CompletionProposer(Proposer):
    """A base model (in-process or over HTTP) asked through the URIAL-style meta-prompt."""

    meta_files = ("urial_meta.txt",)

    def __init__(self, engine, cache=None):
        super().__init__(cache)
        self.engine = engine
        self.id = f"urial:{engine.id}"

    def _write(self, tasks, max_tokens, progress):
        from icl_search.engines import SamplingParams

        prompts = [fill("urial_meta.txt", task=t) for t in tasks]
        room = self.engine.context_window - max_tokens
        out: list[str | None] = [None] * len(prompts)
        fit = [i for i, p in enumerate(prompts) if self.engine.count_tokens(p) <= room]
        # Stop at the next turn, not at a fence: a restyled answer keeps its code blocks; the
        # answer's own closing fence (an odd one out) is cut below.
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, repetition_penalty=1.1,
                                stop=("# Query", "# Answer"), seed=0)
        from icl_search.engines import EngineError

        try:
            done = self.engine.generate([prompts[i] for i in fit], params, progress=progress)
        except EngineError as exc:
            raise ProposeError(f"proposer {self.id}: {exc}") from None
        for i, c in zip(fit, done):
            out[i] = None if c.finish_reason == "error" else _unfence(c.text)
        return out


def _unfence(text: str) -> str:
    t = text.rstrip()
    if t.count("```") % 2 == 1 and t.endswith("```"):
        t = t[:-3].rstrip()
    return t


class DSPyProposer(Proposer):
    """A chat model through `dspy.LM`, asked with the `Write` signature (task -> text)."""

    def __init__(self, model: str, api_base: str | None = None, *, api_key: str | None = None,
                 timeout: float = 120.0, cache=None):
        import dspy

        super().__init__(cache)
        self.id = f"dspy:{model}" + (f"@{api_base}" if api_base else "")
        self.lm = dspy_lm(model, api_base, api_key=api_key, timeout=timeout, num_retries=1)

        class Write(dspy.Signature):
            """Do the task exactly as it says; answer with the requested text only."""

            task: str = dspy.InputField()
            text: str = dspy.OutputField()

        self.predict = dspy.Predict(Write)
        self._reached = False

    def _write(self, tasks, max_tokens, progress):
        import dspy
        from dspy.utils.exceptions import LMError

        out: list[str | None] = []
        for t in tasks:
            try:
                with dspy.context(lm=self.lm, max_tokens=max_tokens):
                    out.append(str(self.predict(task=t).text or ""))
                self._reached = True
            except LMError as exc:
                if not self._reached:  # a dead endpoint: one message, on the first call
                    raise ProposeError(f"proposer {self.id} unreachable: "
                                       f"{str(exc).splitlines()[0][:300]}") from None
                out.append(None)
            except dspy.AdapterParseError:  # an answer DSPy could not read: rejected, counted
                out.append("")
        return out


def make_proposer(spec: str, *, engine=None, cache=None, api_key_env: str | None = None,
                  max_model_len: int | None = 2048) -> Proposer:
    """Build the proposer. `engine` is the study's base model (`self`)."""
    from icl_search.engines import EngineError, make_engine

    p = parse_proposer_spec(spec)
    key = os.environ.get(api_key_env) if api_key_env else None
    if p.kind == "dspy":
        return DSPyProposer(p.target, p.api_base, api_key=key, cache=cache)
    if p.kind == "self":
        if engine is None:
            raise ProposeError("proposer 'self' needs the study's base model (run it from a "
                               "study config)")
        return CompletionProposer(engine, cache)
    try:
        eng = make_engine(p.text, api_key=key, max_model_len=max_model_len)
    except EngineError as exc:
        raise ProposeError(f"proposer {p.text}: {exc}") from None
    return CompletionProposer(eng, cache)
