"""Helpers shared by test files: the tiny study config writer, and a fast in-memory engine and
judge for unit tests of the study loop (the tiny vLLM model covers every real engine path)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from icl_search.engines.base import Completion, SamplingParams
from icl_search.judge import ItemJudgement, JudgeResult
from icl_search.judge.result import aspects_for
from tests.conftest import REPO

POOLS = REPO / "pools"


def write_config(tmp: Path, model: Path, name: str = "t", **sections: str) -> Path:
    """A tiny study config; `optuna=` lines replace the defaults below, `judge=` and `search=`
    lines are added to those sections, other keyword arguments become sections of their own."""
    optuna_extra = sections.pop("optuna", "")
    judge_extra = sections.pop("judge", "")
    search_extra = sections.pop("search", "")
    text = f"""
name = "{name}"
seed = 3
[model]
engine = "vllm:{model}"
max_model_len = 1024
[judge]
spec = "logprob:vllm:{model}"
min_coverage = 0.0
{judge_extra}
[pool]
path = "{POOLS / 'default.jsonl'}"
[eval]
path = "{POOLS / 'eval' / 'dev.jsonl'}"
limit = 6
[decoding]
max_tokens = 8
[search]
system_prompts = ["{POOLS / 'system_prompts' / 'urial_style.txt'}",
                  "{POOLS / 'system_prompts' / 'concise.txt'}"]
k = [0, 2]
{search_extra}
[search.baseline]
example_ids = ["factual-001", "advice-001"]
[optuna]
n_trials = 5
batch_trials = 3
chunk_size = 3
{optuna_extra}
"""
    for line in optuna_extra.splitlines():  # extra optuna keys replace the defaults above
        key = line.split("=")[0].strip()
        text = "\n".join(t for t in text.splitlines()
                         if not (t.startswith(key + " =") and t != line))
    for header, body in sections.items():
        text += f"\n[{header}]\n{body}\n"
    path = tmp / f"{name}.toml"
    path.write_text(text)
    return path


class FakeEngine:
    """A deterministic in-memory `Engine` (icl_search.engines.base): one token per
    whitespace-separated word; the answer to a prompt is a few words derived from its hash,
    cut to `max_tokens` words, so different contexts give different answers."""

    model = "fake"

    def __init__(self, context_window: int = 4096):
        self.id = f"fake:{context_window}"
        self.context_window = context_window
        self.calls = 0
        self.prompts = 0

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def generate(self, prompts: Sequence[str], params: SamplingParams, *,
                 progress: bool = False) -> list[Completion]:
        self.calls += 1
        self.prompts += len(prompts)
        out = []
        for p in prompts:
            h = hashlib.sha256(p.encode()).hexdigest()
            words = [f"w{h[i:i + 3]}" for i in range(0, 3 * (2 + int(h[0], 16) % 6), 3)]
            cut = words[:params.max_tokens]
            out.append(Completion(" ".join(cut), self.count_tokens(p), len(cut),
                                  "length" if len(cut) < len(words) else "stop"))
        return out


class FakeJudge:
    """A deterministic in-memory judge: every aspect of an answer scores 1 + (number of
    words mod 5); a missing answer is missing on every aspect."""

    id = "fake-judge"

    def __init__(self):
        self.items = 0

    def score(self, items) -> JudgeResult:
        self.items += len(items)
        out = []
        for it in items:
            aspects = aspects_for(it.category)
            if it.response is None:
                out.append(ItemJudgement(it.id, it.category, {a: None for a in aspects},
                                         {a: "no response" for a in aspects}))
                continue
            n = len(it.response.split())
            out.append(ItemJudgement(it.id, it.category,
                                     {a: float(1 + n % 5) for a in aspects}, length_words=n))
        return JudgeResult(out, self.id)


class ScriptedEngine(FakeEngine):
    """A `FakeEngine` whose completions are given texts, in turn (the shapes a base model
    produces past its answer: notes after the closing fence, invented turns, loops)."""

    def __init__(self, texts: Sequence[str], context_window: int = 4096):
        super().__init__(context_window)
        self.texts = list(texts)

    def generate(self, prompts: Sequence[str], params: SamplingParams, *,
                 progress: bool = False) -> list[Completion]:
        self.calls += 1
        out = []
        for _ in prompts:
            text = self.texts[self.prompts % len(self.texts)]
            self.prompts += 1
            n = self.count_tokens(text)
            out.append(Completion(text, 10, n, "length" if n >= params.max_tokens else "stop"))
        return out


def confirm_config(tmp: Path, model: Path, name: str, **sections: str) -> Path:
    """`write_config` with a confirm split (10 queries, not confirmed after the run), the URIAL
    file as a second baseline and fixed example sets only (no index needed)."""
    from tests.conftest import SHARED_DATA

    sections.setdefault("optuna", "n_trials = 3")
    sections["search"] = 'strategies = ["fixed"]\n' + sections.get("search", "")
    path = write_config(tmp, model, name=name, **sections)
    path.write_text(path.read_text().replace(
        "limit = 6", "limit = 6\nconfirm_fraction = 0.3\nconfirm_limit = 10\n"
        "confirm_after_run = false").replace(
        'example_ids = ["factual-001", "advice-001"]',
        f'example_ids = ["factual-001", "advice-001"]\n'
        f'urial = "{SHARED_DATA / "urial" / "inst_1k.txt"}"'))
    return path
