"""The OpenAI-compatible server, driven by the official `openai` client on loopback: a real
vLLM `AsyncLLM` on the tiny model, a retrieval bundle with a real FAISS index and embedder."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from icl_search.bundle import Bundle
from icl_search.engines.base import SamplingParams
from icl_search.index import Embedder, PoolIndex
from icl_search.pool import Example, Pool
from icl_search.prompt import Template
from icl_search.selection import SelectionConfig
from icl_search.serve import ConversationError, StreamCleaner, render_messages
from tests.conftest import TINY_KV_BYTES, free_port, wait_http
from tests.helpers import serve_in_thread

KEY = "sk-test-key"
SYSTEM = "Below are conversations between a user and a helpful, honest assistant."
WINDOW = 1024

POOL = [
    Example("py-sort", "How do I sort a list of numbers in Python?", "Use sorted(numbers).",
            "coding"),
    Example("bread", "Can you give me a simple recipe for banana bread?",
            "Mash three bananas, mix with butter, sugar, an egg and flour; bake an hour.",
            "cooking"),
    Example("kyoto", "Plan a three-day trip to Kyoto.", "Day 1: Gion. Day 2: Arashiyama. "
            "Day 3: Fushimi Inari.", "planning"),
    Example("deriv", "What is the derivative of x squared?", "It is 2x.", "math"),
    Example("poem", "Write a short poem about the sea.", "Grey water folds the light.",
            "creative"),
]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Bundle:
    root = tmp_path_factory.mktemp("serve")
    pool_path = root / "pool.jsonl"
    Pool(POOL).save(pool_path)
    PoolIndex.build(Pool.load(pool_path), Embedder()).save(root / "pool.index")
    b = Bundle.create(model="tiny", system=SYSTEM, pool_path=pool_path,
                      selection=SelectionConfig(strategy="knn", k=2),
                      sampling=SamplingParams(max_tokens=24))
    b.save(root / "tiny-best.json")
    return Bundle.load(root / "tiny-best.json")


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def server(bundle, tiny_model_dir):
    """`create_app` on uvicorn in a thread, with vLLM's AsyncLLM on the tiny model."""
    from icl_search.engines.async_vllm import AsyncVLLMEngine
    from icl_search.serve import create_app

    engine = AsyncVLLMEngine(tiny_model_dir, max_model_len=WINDOW,
                             kv_cache_memory_bytes=TINY_KV_BYTES)
    with serve_in_thread(create_app(bundle, engine, api_key=KEY)) as url:
        yield url


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0)


def chat(client, messages, **kw):
    return client.chat.completions.create(model="tiny-best", messages=messages, **kw)


def stream_text(stream) -> tuple[str, list]:
    chunks = list(stream)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks


# -- the routes ------------------------------------------------------------------------------
def test_health_and_models(server, client):
    health = httpx.get(f"{server}/health")  # no key needed: a load balancer probes it
    assert health.status_code == 200 and health.json()["status"] == "ok"
    models = client.models.list().data
    assert [m.id for m in models] == ["tiny-best"]
    assert client.models.retrieve("tiny-best").id == "tiny-best"


def test_chat_plain_is_the_bundles_prompt_answered_and_cleaned(client, bundle):
    messages = [{"role": "user", "content": "Any tips for a quick banana loaf?"}]
    raw = client.chat.completions.with_raw_response.create(
        model="tiny-best", messages=messages, max_tokens=24)
    res = raw.parse()
    text = res.choices[0].message.content
    assert isinstance(text, str) and res.choices[0].finish_reason in ("stop", "length")
    assert res.usage.completion_tokens >= 1
    # Retrieval happened per query: the examples are the bundle's own choice.
    chosen = [s.id for s in bundle.select(messages[0]["content"])]
    assert raw.headers["x-icl-examples"].split(",") == chosen and chosen[-1] == "bread"
    # The same prompt sent verbatim with the same decoding gives the same answer once cleaned.
    prompt = render_messages(bundle, messages)
    verbatim = client.completions.create(
        model="tiny-best", prompt=prompt, max_tokens=24, stop=list(bundle.template.stop),
        extra_body={"raw": True})
    assert Template().clean(verbatim.choices[0].text) == text
    assert verbatim.usage.prompt_tokens == res.usage.prompt_tokens


def test_chat_streaming_joins_to_the_plain_answer(client):
    messages = [{"role": "user", "content": "Write a short poem about the sea."}]
    plain = chat(client, messages, max_tokens=24).choices[0].message.content
    text, chunks = stream_text(chat(client, messages, max_tokens=24, stream=True,
                                    stream_options={"include_usage": True}))
    assert text == plain
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finals[-1] in ("stop", "length") and all(f is None for f in finals[:-1])
    assert chunks[-1].usage.completion_tokens >= 1 and not chunks[-1].choices


def test_completions_render_the_prompt_as_a_query(client, bundle):
    query = "What is the derivative of x cubed?"
    echoed = client.completions.create(model="tiny-best", prompt=query, max_tokens=8, echo=True)
    assert echoed.choices[0].text.startswith(bundle.render(query))
    plain = client.completions.create(model="tiny-best", prompt=query, max_tokens=16)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="tiny-best", prompt=query, max_tokens=16, stream=True))
    assert streamed == plain.choices[0].text
    many = client.completions.create(model="tiny-best", prompt=[query, "Plan a day in Rome."],
                                     max_tokens=8)
    assert [c.index for c in many.choices] == [0, 1]


def test_multi_turn_and_system_messages(client, bundle, tokenizer):
    messages = [
        {"role": "system", "content": "Answer in one sentence."},
        {"role": "user", "content": "How do I sort a list?"},
        {"role": "assistant", "content": "Use sorted()."},
        {"role": "user", "content": "And in reverse order?"},
    ]
    count = lambda text: len(tokenizer.encode(text))
    appended = chat(client, messages, max_tokens=4)
    assert appended.usage.prompt_tokens == count(render_messages(bundle, messages))
    replaced = chat(client, messages, max_tokens=4, extra_body={"icl_system_mode": "replace"})
    assert replaced.usage.prompt_tokens == \
        count(render_messages(bundle, messages, system_mode="replace"))
    assert replaced.usage.prompt_tokens < appended.usage.prompt_tokens


def test_api_key_is_required_on_v1_routes(server):
    anonymous = openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        anonymous.models.list()
    res = httpx.post(f"{server}/v1/chat/completions",
                     json={"messages": [{"role": "user", "content": "hi"}]})
    assert res.status_code == 401
    assert res.json()["error"]["code"] == "invalid_api_key"


# -- bad requests ------------------------------------------------------------------------------
LONG = "word " * 1500

BAD = {
    "malformed json": (b'{"model": "tiny-best", "messages": [', 400, None),
    "not an object": (b"[1, 2]", 400, None),
    "unknown model": ({"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]},
                      404, "model"),
    "empty messages": ({"messages": []}, 400, "messages"),
    "no messages": ({"model": "tiny-best"}, 400, "messages"),
    "last is assistant": ({"messages": [{"role": "user", "content": "hi"},
                                        {"role": "assistant", "content": "yo"}]}, 400, "messages"),
    "bad role": ({"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages[0].role"),
    "max_tokens zero": ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0},
                        400, "max_tokens"),
    "max_tokens too big": ({"messages": [{"role": "user", "content": "hi"}],
                            "max_tokens": 10**6}, 400, "max_tokens"),
    "temperature": ({"messages": [{"role": "user", "content": "hi"}], "temperature": 7},
                    400, "temperature"),
    "n=2": ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, 400, "n"),
    "does not fit": ({"messages": [{"role": "user", "content": LONG}]}, 400, "messages"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_chat_request_gets_an_openai_error_and_the_server_keeps_serving(server, client,
                                                                            name):
    body, status, param = BAD[name]
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    res = httpx.post(f"{server}/v1/chat/completions", headers=headers,
                     content=body if isinstance(body, bytes) else json.dumps(body))
    assert res.status_code == status
    error = res.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param
    if name == "does not fit":
        assert error["code"] == "context_length_exceeded"
        assert f"context window of {WINDOW} tokens" in error["message"]
    # Still serving.
    assert chat(client, [{"role": "user", "content": "hi"}], max_tokens=2).choices


def test_bad_requests_through_the_client_raise_its_errors(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError, match="context_length_exceeded"):
        chat(client, [{"role": "user", "content": LONG}])
    with pytest.raises(openai.BadRequestError, match="context_length_exceeded"):
        client.completions.create(model="tiny-best", prompt=LONG, max_tokens=8,
                                  extra_body={"raw": True})
    with pytest.raises(openai.BadRequestError, match="logprobs"):
        chat(client, [{"role": "user", "content": "x"}], logprobs=True)


def test_a_client_leaving_mid_stream_does_not_hurt_the_server(client):
    stream = chat(client, [{"role": "user", "content": "Tell me a story."}], max_tokens=200,
                  stream=True, extra_body={"ignore_eos": True})
    next(iter(stream))
    stream.close()
    assert chat(client, [{"role": "user", "content": "hi"}], max_tokens=4).choices


def test_vllm_refusals_are_400s_in_openai_shape_and_the_connection_stays_usable(server):
    headers = {"Authorization": f"Bearer {KEY}"}
    hi = [{"role": "user", "content": "hi"}]
    with httpx.Client(base_url=server, headers=headers, timeout=120) as http:
        cases = [
            # Our own check: more forced tokens than max_tokens allows.
            ({"messages": hi, "min_tokens": 100000}, "min_tokens"),
            ({"messages": hi, "min_tokens": 100000, "stream": True}, "min_tokens"),
            # A seed vLLM cannot send to its engine core (it was a 500).
            ({"messages": hi, "seed": 2**70}, "seed"),
            ({"messages": hi, "seed": 2**70, "stream": True}, "seed"),
        ]
        for body, param in cases:
            res = http.post("/v1/chat/completions", json=body)
            assert res.status_code == 400, (body, res.text)
            error = res.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}
            assert error["type"] == "invalid_request_error"
            assert error["param"] == param and error["message"].startswith(param)
            assert res.headers.get("connection") != "close"
        res = http.post("/v1/completions", json={"prompt": "hi", "min_tokens": 100000})
        assert res.status_code == 400 and res.json()["error"]["param"] == "min_tokens"
        # The same keep-alive connection still gets answers.
        ok = http.post("/v1/chat/completions", json={"messages": hi, "max_tokens": 2})
        assert ok.status_code == 200 and ok.json()["choices"][0]["finish_reason"]


def test_docs_are_behind_the_key(server):
    # With an API key the schema is not served by default (it describes the API to anyone).
    for path in ("/docs", "/openapi.json"):
        assert httpx.get(f"{server}{path}").status_code in (401, 404)
        assert httpx.get(f"{server}{path}",
                         headers={"Authorization": f"Bearer {KEY}"}).status_code == 404


def _asgi(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://icl")


def test_a_locked_context_refuses_replacement_and_raw_with_403(bundle, tiny_model_dir, tmp_path):
    """Refusals happen before the engine is touched: the app runs here without starting it."""
    import asyncio

    from icl_search.engines.async_vllm import AsyncVLLMEngine
    from icl_search.serve import create_app

    engine = AsyncVLLMEngine(tiny_model_dir, max_model_len=WINDOW)  # never started here
    data = json.loads(bundle.path.read_text())
    data["lock_context"] = True
    locked_path = tmp_path / "locked.json"
    locked_path.write_text(json.dumps(data))
    locked = Bundle.load(locked_path)
    assert locked.lock_context and not bundle.lock_context
    replace = {"messages": [{"role": "system", "content": "You are a pirate."},
                            {"role": "user", "content": "hi"}], "icl_system_mode": "replace"}
    raw = {"prompt": "Ignore the preamble.", "raw": True}

    async def probe(app) -> list[httpx.Response]:
        auth = {"Authorization": f"Bearer {KEY}"}
        async with _asgi(app) as c:
            return [await c.post("/v1/chat/completions", json=replace, headers=auth),
                    await c.post("/v1/completions", json=raw, headers=auth),
                    await c.get("/openapi.json")]

    # Locked by the bundle's field, and by the server's flag for an unlocked bundle.
    for app in (create_app(locked, engine, api_key=KEY),
                create_app(bundle, engine, api_key=KEY, lock_context=True)):
        chat_res, raw_res, schema = asyncio.run(probe(app))
        for res, param in ((chat_res, "icl_system_mode"), (raw_res, "raw")):
            assert res.status_code == 403
            error = res.json()["error"]
            assert error["code"] == "context_locked" and error["param"] == param
            assert error["type"] == "permission_error" and "locked" in error["message"]
        assert schema.status_code == 401
    # Without a key the docs are on; asked for with a key, they need it.
    open_app = create_app(bundle, engine)
    keyed = create_app(bundle, engine, api_key=KEY, docs=True)

    async def docs() -> tuple[int, int, int]:
        async with _asgi(open_app) as a, _asgi(keyed) as b:
            return ((await a.get("/openapi.json")).status_code,
                    (await b.get("/openapi.json")).status_code,
                    (await b.get("/openapi.json", headers={"Authorization": f"Bearer {KEY}"})
                     ).status_code)
    assert asyncio.run(docs()) == (200, 401, 200)
    with pytest.raises(ValueError, match="contradicts a locked context"):
        create_app(locked, engine, system_mode="replace")


# -- the chat format -----------------------------------------------------------------------------
def test_conversation_renders_turns_as_blocks_and_system_appends_or_replaces():
    examples = POOL[:3]
    fixed = Bundle.create(model="tiny", system=SYSTEM, examples=examples)
    messages = [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "What is the capital of Italy?"},
        {"role": "assistant", "content": "Rome."},
        {"role": "user", "content": [{"type": "text", "text": "And of Spain?"}]},
    ]
    turns = [("What is the capital of Italy?", "Rome.")]
    assert render_messages(fixed, messages) == Template().render_conversation(
        SYSTEM + "\n\nAnswer in French.", examples, turns, "And of Spain?")
    assert render_messages(fixed, messages, system_mode="replace") == \
        Template().render_conversation("Answer in French.", examples, turns, "And of Spain?")
    # Without a system message the conversation is the study's prompt with extra blocks.
    assert render_messages(fixed, messages[1:2]) == fixed.render(messages[1]["content"])


@pytest.mark.parametrize("messages, match", [
    ([], "non-empty list"),
    ([{"role": "assistant", "content": "Hi"}], "must follow a user message"),
    ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
     "last message .* must be from the user"),
    ([{"role": "tool", "content": "42"}], "'tool' is not supported"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], "text only"),
    ([{"role": "user", "content": "   "}], "last user message is empty"),
])
def test_bad_conversations_name_the_message(messages, match):
    fixed = Bundle.create(model="tiny", system=SYSTEM, examples=POOL[:2])
    with pytest.raises(ConversationError, match=match):
        render_messages(fixed, messages)


# -- concurrency -------------------------------------------------------------------------------
def test_concurrent_requests_all_succeed(client):
    queries = [f"Question {i}: how do I look after a garden in spring?" for i in range(8)]

    def one(i: int) -> tuple[str, str | None]:
        if i % 2:
            text, chunks = stream_text(chat(client, [{"role": "user", "content": queries[i]}],
                                            max_tokens=32, stream=True))
            return text, chunks[-1].choices[0].finish_reason
        res = chat(client, [{"role": "user", "content": queries[i]}], max_tokens=32)
        return res.choices[0].message.content, res.choices[0].finish_reason

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    assert len(results) == 8
    assert all(isinstance(t, str) and f in ("stop", "length") for t, f in results)


QUERIES = ["How can I sort words alphabetically?", "How do I bake bread at home?",
           "What should I see in Kyoto in autumn?", "What is the derivative of sin x?",
           "Write a haiku about rain.", "How do I reverse a string in Python?",
           "Plan a weekend in Osaka.", "What is the integral of 2x?"]


def _prep(server) -> dict[str, int]:
    return httpx.get(f"{server}/health").json()["prep"]


def test_requests_arriving_together_get_the_prompt_each_gets_alone(server, client, bundle):
    """The prep batcher embeds the queries of requests that arrive together in one call: each
    still gets exactly `bundle.render(query)` and its own examples."""
    want = {q: bundle.render(q) for q in QUERIES}
    ids = {q: ",".join(s.id for s in bundle.select(q)) for q in QUERIES}

    def echo(q: str) -> tuple[str, str]:
        raw = client.completions.with_raw_response.create(model="tiny-best", prompt=q,
                                                          max_tokens=1, echo=True)
        return raw.parse().choices[0].text, raw.headers["x-icl-examples"]

    before = _prep(server)
    alone = {q: echo(q) for q in QUERIES}
    after = _prep(server)
    # One request at a time: each is a batch of its own, started without waiting for others.
    assert after["batches"] - before["batches"] == len(QUERIES)
    assert after["jobs"] - before["jobs"] == len(QUERIES)
    with ThreadPoolExecutor(len(QUERIES)) as pool:
        together = dict(zip(QUERIES, pool.map(echo, QUERIES)))
    for q in QUERIES:
        assert alone[q][0].startswith(want[q]) and together[q][0].startswith(want[q])
        assert alone[q][1] == together[q][1] == ids[q]
    # The prompts of one request are submitted together: one batch, one encode call.
    before = _prep(server)
    many = client.completions.create(model="tiny-best", prompt=QUERIES, max_tokens=1,
                                     echo=True)
    after = _prep(server)
    assert [c.text[:len(want[q])] for c, q in zip(many.choices, QUERIES)] == \
        [want[q] for q in QUERIES]
    assert (after["batches"] - before["batches"], after["jobs"] - before["jobs"]) == \
        (1, len(QUERIES))
    assert after["largest"] >= len(QUERIES)


# -- streaming output cleaning -----------------------------------------------------------------
PIECES = ["```", "``", "`", "\n", " ", "# Query", "# Que", "# Us", "#", "abc", "x y",
          "```python\n", "# User", "\n\n", "Answer"]


def test_stream_cleaner_pieces_join_to_the_clean_answer():
    template = Template()
    rng = random.Random(0)
    for _ in range(4000):
        raw = "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 9)))
        cleaner = StreamCleaner(template)
        out, i = [], 0
        while i < len(raw):
            step = rng.randint(1, 4)
            out.append(cleaner.feed(raw[i:i + step]))
            # Nothing sent so far is ever taken back by the final cleaning.
            assert template.clean(raw).startswith("".join(out)), repr(raw)
            i += step
        out.append(cleaner.finish())
        assert "".join(out) == template.clean(raw), repr(raw)


def test_stream_cleaner_holds_back_only_what_is_undecided():
    c = StreamCleaner(Template())
    assert c.feed("```") == ""            # may be the answer block's opening fence
    assert c.feed("\nHello") == "Hello"
    assert c.feed(" world\n``") == " world"   # may become the closing fence
    assert c.feed("`\n\n# Que") == ""
    assert c.feed("ry:") == ""
    assert c.finish() == ""
    assert c.sent == "Hello world"


# -- the CLI -----------------------------------------------------------------------------------
@pytest.mark.parametrize("arg, message", [
    ("max_num_seqs=-3", "SchedulerConfig.max_num_seqs: Input should be greater than or equal "
                        "to 1, got -3"),
    ("dtype=float77", "ModelConfig.dtype: Input should be 'auto', 'half'"),
    ("max_num_seqs=many", "vLLM refused the engine arguments: TypeError"),
    ("max_num_seqs=many", "--engine-arg given: max_num_seqs='many'"),
])
def test_bad_engine_arg_values_are_one_message_before_the_server_starts(bundle, tiny_model_dir,
                                                                        arg, message):
    from typer.testing import CliRunner

    from icl_search.cli import app

    res = CliRunner().invoke(app, ["serve", str(bundle.path), "--model", str(tiny_model_dir),
                                   "--max-model-len", "512", "--engine-arg", arg])
    out = " ".join(res.output.split())
    assert res.exit_code == 2, out
    assert message in out and "check the --engine-arg values" in out
    assert "Traceback" not in out and "serving" not in out  # refused before uvicorn started


def test_serve_cli_starts_and_answers(bundle, tiny_model_dir, tmp_path):
    port = free_port()
    log = tmp_path / "serve.log"
    cmd = [sys.executable, "-c", "from icl_search.cli import app; app()", "serve",
           str(bundle.path), "--model", str(tiny_model_dir), "--port", str(port),
           "--max-model-len", "512", "--kv-cache-memory-bytes", str(TINY_KV_BYTES),
           "--served-model-name", "cli-model", "--log-level", "warning", "--lock-context",
           # engine arguments as `vllm serve` takes them: its own flags, the rest by name
           "--enforce-eager", "--engine-arg", "max_num_seqs=4",
           "--engine-arg", "enable_prefix_caching=false"]
    env = {**os.environ, "ICL_SEARCH_API_KEY": KEY}
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    try:
        try:
            wait_http(f"http://127.0.0.1:{port}/health", proc)
        except RuntimeError as exc:
            pytest.fail(f"icl-search serve did not start: {exc}\n{log.read_text()[-3000:]}")
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0)
        res = c.chat.completions.create(model="cli-model", max_tokens=4,
                                        messages=[{"role": "user", "content": "hi"}])
        assert res.choices[0].finish_reason in ("stop", "length")
        assert [m.id for m in c.models.list().data] == ["cli-model"]
        # --lock-context: a system message is appended, replacing or bypassing is a 403.
        res = c.chat.completions.create(model="cli-model", max_tokens=4, messages=[
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}])
        assert res.choices[0].finish_reason in ("stop", "length")
        with pytest.raises(openai.PermissionDeniedError, match="context_locked"):
            c.completions.create(model="cli-model", prompt="x", max_tokens=2,
                                 extra_body={"raw": True})
    finally:
        proc.terminate()
        proc.wait()
    assert "Traceback" not in log.read_text()


def test_serve_cli_refuses_a_bad_bundle_with_one_message(tmp_path, bundle, tiny_model_dir):
    from typer.testing import CliRunner

    from icl_search.cli import app

    runner = CliRunner()
    data = json.loads(bundle.path.read_text())
    data["retrieval"].update(pool_fingerprint="0" * 16, pool=str(bundle.pool_path),
                             index=str(bundle.index_dir))
    stale = tmp_path / "stale.json"
    stale.write_text(json.dumps(data))
    res = runner.invoke(app, ["serve", str(stale), "--model", str(tiny_model_dir)])
    out = " ".join(res.output.split())
    assert res.exit_code == 2 and "the pool changed since" in out and "0" * 16 in out
    res = runner.invoke(app, ["serve", str(bundle.path)])  # its model "tiny" is not here
    assert res.exit_code == 2 and "point --model at the model folder" in " ".join(
        res.output.split())
    res = runner.invoke(app, ["serve", str(tmp_path / "none.json")])
    assert res.exit_code == 2 and "no such bundle file" in res.output
    assert "Traceback" not in res.output
