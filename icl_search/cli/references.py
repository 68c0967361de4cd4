"""`icl-search references build`: reference answers for a query file, written by a strong model.

Reference-anchored judges (`refsim`, the default judge) compare an answer with its row's
`reference`. This command adds one to every row that lacks it, with the model an engine spec
names:

    openai:http://host:port/v1[#model]     an OpenAI-compatible chat endpoint (`vllm serve`...)
    dspy:<provider>/<model>[@<api_base>]   a chat model through dspy.LM (LiteLLM's names)
    vllm:<model>                           a local model in-process: its chat template when it
                                           has one, else the URIAL prompt of a base model

Every reference is cached (the project cache) as soon as it is written, so an interrupted or
failed run resumes where it stopped. The output is written once, atomically, when every row
has a reference: a dead endpoint or a failed row stops the command with one message and leaves
no output file. Rows that already have a reference keep it; every other field is kept as is.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import typer

from icl_search.cli import app, fail
from icl_search.engines.dspy_lm import dspy_lm
from icl_search.errors import IclSearchError

references_app = typer.Typer(help="Reference answers for eval sets (read by the "
                             "reference-anchored judges).", no_args_is_help=True)
app.add_typer(references_app, name="references")


class WriterError(IclSearchError):
    """The reference writer cannot be used (bad spec, dead endpoint); one message."""


def instructions() -> str:
    from importlib.resources import files

    return files("icl_search").joinpath("templates/reference_writer.txt").read_text("utf-8")


@dataclass
class Writer:
    """One way to ask a model for a reference: `ask(query) -> text` (raises on failure)."""

    id: str
    ask: Callable[[str], str]
    concurrency: int = 4


def openai_writer(url: str, model: str | None, *, max_tokens: int, temperature: float,
                  timeout: float, api_key: str | None) -> Writer:
    import os

    import openai

    base = url.rstrip("/")
    base = base if base.endswith("/v1") else base + "/v1"
    key = api_key or os.environ.get("ICL_SEARCH_API_KEY") or os.environ.get("OPENAI_API_KEY")
    client = openai.OpenAI(base_url=base, api_key=key or "EMPTY", timeout=timeout,
                           max_retries=2)
    name = [model]

    def ask(query: str) -> str:
        if name[0] is None:  # the server's only (or first) model
            listed = client.models.list().data
            if not listed:
                raise WriterError(f"{base}/models lists no model; name one: "
                                  "openai:URL#MODEL")
            name[0] = listed[0].id
        reply = client.chat.completions.create(
            model=name[0], max_tokens=max_tokens, temperature=temperature,
            messages=[{"role": "system", "content": instructions()},
                      {"role": "user", "content": query}])
        return reply.choices[0].message.content or ""

    return Writer(f"openai:{base}#{model or ''}", ask)


def dspy_writer(spec: str, *, max_tokens: int, temperature: float, timeout: float,
                api_key: str | None) -> Writer:
    from dspy import lm15

    model, _, api_base = spec.partition("@")
    lm = dspy_lm(model, api_base or None, api_key=api_key, timeout=timeout, num_retries=2)

    def ask(query: str) -> str:
        request = lm15.Request(model=model, system=instructions(),
                               messages=(lm15.Message.user(query),),
                               config=lm15.Config(max_tokens=max_tokens,
                                                  temperature=temperature))
        return lm(request).text or ""

    return Writer(f"dspy:{spec}", ask)


def _rows(path: Path) -> list[tuple[int, dict]]:
    """The query file's rows as read (every field kept), after the project's reader has
    checked them (one message naming the file and line)."""
    from icl_search.evalset import load_queries
    from icl_search.io import read_jsonl_objects

    load_queries(path)
    return list(read_jsonl_objects(path))


def _clean(text: str) -> str:
    return text.strip()


def _http_build(writer: Writer, todo: dict[str, str], cache, key: Callable[[str], str],
                bar) -> dict[str, str]:
    """References for `todo` (id -> query) through an HTTP writer; the first one alone, so a
    dead endpoint stops at one request."""
    out: dict[str, str] = {}
    ids = list(todo)

    def one(qid: str) -> tuple[str, str | None, str | None]:
        try:
            text = _clean(writer.ask(todo[qid]))
        except Exception as exc:  # noqa: BLE001  (any transport or API error is this row's failure)
            return qid, None, " ".join(str(exc).split())[:300] or type(exc).__name__
        if not text:
            return qid, None, "the model answered with an empty text"
        cache.put_many([(key(todo[qid]), text)])
        bar.update(1)
        return qid, text, None

    qid, text, why = one(ids[0])
    if text is None:
        raise WriterError(f"reference writer {writer.id}: the first request failed, so the "
                          f"endpoint cannot be used: {why}")
    out[qid] = text
    failed: list[tuple[str, str]] = []
    with ThreadPoolExecutor(writer.concurrency) as pool:
        for qid, text, why in pool.map(one, ids[1:]):
            if text is None:
                failed.append((qid, why or ""))
            else:
                out[qid] = text
    if failed:
        raise WriterError(f"{len(failed)} of {len(ids)} references could not be written (the "
                          f"{len(out)} written are cached: run the command again to resume); "
                          f"first: id {failed[0][0]!r}: {failed[0][1]}")
    return out


def _vllm_build(spec: str, todo: dict[str, str], cache_path: Path | None, *,
                max_tokens: int, temperature: float, max_model_len: int | None,
                bar) -> dict[str, str]:
    from icl_search.cache import Cache
    from icl_search.engines import CachedEngine, SamplingParams, make_engine

    engine = make_engine(spec, max_model_len=max_model_len)
    tok = getattr(engine, "tokenizer", None)
    params = SamplingParams(max_tokens=max_tokens, temperature=temperature)
    cached = CachedEngine(engine, Cache(cache_path))
    ids = list(todo)
    if tok is not None and getattr(tok, "chat_template", None):
        prompts = [tok.apply_chat_template(
            [{"role": "system", "content": instructions()},
             {"role": "user", "content": todo[i]}], tokenize=False, add_generation_prompt=True)
            for i in ids]
        texts = [c.text if c.finish_reason != "error" else None
                 for c in cached.generate(prompts, params)]
        bar.update(len(ids))
    else:  # a base model: the URIAL prompt with the project's preamble
        from icl_search.cli.generate import _read_system
        from icl_search.evalset import Query
        from icl_search.generation import generate_answers

        answers = generate_answers(cached, [Query(i, todo[i]) for i in ids],
                                   system=_read_system(None),
                                   params=params.replace(repetition_penalty=1.1),
                                   progress=bar.update)
        texts = [a.answer if a.finish_reason != "error" else None for a in answers]
    out = {i: _clean(t) for i, t in zip(ids, texts, strict=True) if t and _clean(t)}
    if len(out) < len(ids):
        first = next(i for i in ids if i not in out)
        raise WriterError(f"{len(ids) - len(out)} of {len(ids)} references could not be "
                          f"written by {spec} (first: id {first!r}: an empty or failed "
                          "generation); nothing was written")
    return out


@references_app.command("build")
def build(
    queries: Path = typer.Argument(..., help="Query file (JSONL: 'query', optional 'id', "
                                   "'category', 'reference', any other field)."),
    engine: str = typer.Option(..., "--engine", help="The writer: openai:http://host:port/v1"
                               "[#model] (chat endpoint), dspy:<provider>/<model>[@<api_base>] "
                               "or vllm:<model> (local)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output JSONL: the rows with "
                             "'reference' added; written once, when every row has one."),
    max_tokens: int = typer.Option(1024, min=16, help="Longest reference, in tokens."),
    temperature: float = typer.Option(0.0, min=0.0, help="Sampling temperature (0: greedy)."),
    timeout: float = typer.Option(120.0, min=1.0, help="Seconds per request (HTTP writers)."),
    api_key: str | None = typer.Option(None, help="API key (default: ICL_SEARCH_API_KEY, "
                                       "then the provider's variable)."),
    max_model_len: int | None = typer.Option(None, help="vllm: context window."),
    cache: Path | None = typer.Option(None, help="Cache file (default: "
                                      "$ICL_SEARCH_HOME/cache.sqlite3)."),
) -> None:
    """Add a reference answer, written by a strong model, to every row that lacks one."""
    from tqdm.auto import tqdm

    from icl_search.cache import Cache, cache_key
    from icl_search.engines import parse_spec
    from icl_search.io import write_jsonl

    rows = _rows(queries)  # a bad file fails here, before any model loads
    kind, _, rest = engine.partition(":")
    if kind not in ("openai", "dspy", "vllm") or not rest:
        fail(f"--engine {engine!r}: expected openai:http(s)://host:port/v1[#model], "
             "dspy:<provider>/<model>[@<api_base>] or vllm:<model>")
    ids = [str(r.get("id", n)) for n, r in rows]
    have = {i: r["reference"] for i, (_, r) in zip(ids, rows, strict=True) if "reference" in r}
    todo = {i: next(r[f] for f in ("query", "instruction", "prompt") if f in r)
            for i, (_, r) in zip(ids, rows, strict=True) if i not in have}
    store = Cache(cache)
    written: dict[str, str] = {}
    opts = {"max_tokens": max_tokens, "temperature": temperature}
    with tqdm(total=len(rows), initial=len(have), desc="references", unit="row",
              file=sys.stderr) as bar:
        if todo and kind == "vllm":
            written = _vllm_build(engine, todo, cache, max_model_len=max_model_len, bar=bar,
                                  **opts)
        elif todo:
            if kind == "openai":
                try:
                    _, url, model = parse_spec(engine)
                except ValueError as exc:
                    fail(f"--engine: {exc}")
                writer = openai_writer(url, model, timeout=timeout, api_key=api_key, **opts)
            else:
                if "/" not in rest.split("@", 1)[0]:
                    fail(f"--engine {engine!r}: expected dspy:<provider>/<model>[@<api_base>]")
                writer = dspy_writer(rest, timeout=timeout, api_key=api_key, **opts)

            def key(query: str) -> str:
                return cache_key("reference", writer.id, instructions(), query, max_tokens,
                                 temperature)

            found = store.get_many([key(q) for q in todo.values()])
            for qid, q in list(todo.items()):
                if key(q) in found:
                    written[qid] = found[key(q)]
                    del todo[qid]
                    bar.update(1)
            if todo:
                written.update(_http_build(writer, todo, store, key, bar))
    merged = [{**r, "reference": have.get(i) or written[i]} for i, (_, r) in
              zip(ids, rows, strict=True)]
    write_jsonl(out, merged)
    typer.echo(f"wrote {len(merged)} rows to {out} ({len(have)} kept their reference, "
               f"{len(merged) - len(have)} written by {engine})", err=True)
