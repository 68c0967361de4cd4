"""The engine interface on real backends: vLLM in-process and `vllm serve` over HTTP."""

import threading

import pytest

from icl_search.cache import Cache
from icl_search.engines import CachedEngine, EngineError, SamplingParams, make_engine, parse_spec
from icl_search.engines.openai import OpenAIEngine

GREEDY = SamplingParams(max_tokens=12, temperature=0.0, repetition_penalty=1.0)


def test_spec_grammar():
    assert parse_spec("vllm:default") == ("vllm", "default", None)
    assert parse_spec("/models/x") == ("vllm", "/models/x", None)
    assert parse_spec("openai:http://h:1/v1#m") == ("openai", "http://h:1/v1", "m")
    with pytest.raises(ValueError, match="expected openai:http"):
        parse_spec("openai:localhost")


@pytest.mark.parametrize("field,value", [
    ("max_tokens", 0), ("temperature", -1.0), ("top_p", 0.0), ("repetition_penalty", 3.0),
    ("logprobs", 50), ("temperature", float("nan")),
])
def test_sampling_params_out_of_range_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"sampling parameter {field}="):
        SamplingParams(**{field: value})


def test_vllm_generates_a_batch_with_token_counts(tiny_engine):
    prompts = ["# Query:\n```\nhello\n```\n", "The quick brown fox", "Paris is"]
    outs = tiny_engine.generate(prompts, GREEDY)
    assert len(outs) == 3
    for p, o in zip(prompts, outs):
        assert o.prompt_tokens == tiny_engine.count_tokens(p)
        assert 1 <= o.completion_tokens <= 12
        assert o.finish_reason in ("stop", "length")
    # greedy decoding is deterministic: the same prompt alone gives the same text
    assert tiny_engine.generate(prompts[:1], GREEDY)[0].text == outs[0].text


def test_vllm_logprobs_are_top_k_per_token(tiny_engine):
    [o] = tiny_engine.generate(["Paris is"], GREEDY.replace(max_tokens=3, logprobs=5))
    assert len(o.logprobs) == o.completion_tokens
    assert all(1 <= len(pos) <= 6 and all(v <= 0 for v in pos.values()) for pos in o.logprobs)


def test_cached_engine_pays_once(tiny_engine, tmp_path):
    cache = Cache(tmp_path / "c.sqlite3")
    eng = CachedEngine(tiny_engine, cache)
    before = tiny_engine.stats.prompts
    first = eng.generate(["a b c", "d e f", "a b c"], GREEDY)
    assert tiny_engine.stats.prompts - before == 2  # the duplicate prompt is generated once
    second = eng.generate(["d e f", "a b c"], GREEDY)
    assert tiny_engine.stats.prompts - before == 2  # no model call at all
    assert [c.cached for c in second] == [True, True]
    assert [c.text for c in second] == [first[1].text, first[0].text]
    # different parameters are a different key
    eng.generate(["a b c"], GREEDY.replace(max_tokens=5))
    assert tiny_engine.stats.prompts - before == 3


def test_cache_survives_reopen_and_concurrent_writers(tmp_path):
    path = tmp_path / "c.sqlite3"
    c1 = Cache(path)

    def writer(n):
        c = Cache(path)
        c.put_many((c.key("w", n, i), {"i": i}) for i in range(200))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(c1) == 800
    assert Cache(path).get(Cache.key("w", 3, 7)) == {"i": 7}


def test_openai_engine_against_vllm_serve(vllm_server, tiny_engine):
    eng = make_engine(f"openai:{vllm_server}")
    assert isinstance(eng, OpenAIEngine) and eng.model == "tiny"
    assert eng.context_window == 1024
    prompts = ["The quick brown fox", "Paris is", "hello"]
    outs = eng.generate(prompts, GREEDY.replace(logprobs=3), progress=False)
    assert [o.completion_tokens > 0 for o in outs] == [True] * 3
    assert all(len(o.logprobs) == o.completion_tokens for o in outs)
    # the same weights in-process give the same greedy text
    local = tiny_engine.generate(prompts, GREEDY)
    assert [o.text for o in outs] == [o.text for o in local]
    assert eng.count_tokens("The quick brown fox") == tiny_engine.count_tokens("The quick brown fox")


def test_openai_engine_unknown_model_is_one_clear_error(vllm_server):
    with pytest.raises(EngineError, match=r"model 'nope' is not served at .*served: tiny"):
        OpenAIEngine(vllm_server, "nope")


def test_unreachable_endpoint_fails_after_bounded_retries():
    from tests.conftest import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(EngineError, match=r"unreachable after 3 attempts"):
        OpenAIEngine(url, "m", max_retries=2, timeout=2)


# -- Hugging Face Hub ids --------------------------------------------------------------------
def _fake_hub_cache(hf_home, model_dir, repo_id: str):
    """The Hub cache layout huggingface_hub writes (refs/main -> snapshots/<commit>/...)."""
    import shutil

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(model_dir, repo / "snapshots" / commit,
                    ignore=shutil.ignore_patterns(".*"))
    return repo / "snapshots" / commit


def test_uncached_hub_id_offline_is_one_message_naming_hf_hub_offline(tmp_path, monkeypatch):
    from icl_search.models import ModelError, resolve_model

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as exc:
        make_engine("vllm:Qwen/Qwen2.5-0.5B")
    msg = str(exc.value)
    assert msg.startswith("'Qwen/Qwen2.5-0.5B' is neither a model folder nor a Hugging Face "
                          f"model in the local Hub cache ({tmp_path / 'hf' / 'hub'})")
    assert "HF_HUB_OFFLINE is set" in msg and "hf download Qwen/Qwen2.5-0.5B" in msg
    # a name that is no id at all keeps the old message
    with pytest.raises(ModelError, match="not a Hugging Face id"):
        resolve_model("no-such-model")


def test_cached_hub_id_loads_the_cached_snapshot(tmp_path, monkeypatch, tiny_model_dir,
                                                 tiny_engine):
    from icl_search.models import resolve_model
    from tests.conftest import TINY_KV_BYTES

    snap = _fake_hub_cache(tmp_path / "hf", tiny_model_dir, "tiny-org/tiny-llama")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model("tiny-org/tiny-llama") == snap
    engine = make_engine("vllm:tiny-org/tiny-llama", max_model_len=1024,
                         kv_cache_memory_bytes=TINY_KV_BYTES)
    prompt = "The quick brown fox"
    assert engine.generate([prompt], GREEDY)[0].text == \
        tiny_engine.generate([prompt], GREEDY)[0].text


# -- [model.engine_args] ---------------------------------------------------------------------
def test_engine_args_are_checked_against_vllms_engine_args(tmp_path, tiny_model_dir):
    from icl_search.engines.vllm import check_engine_args
    from icl_search.study import ConfigError, load_config
    from tests.helpers import write_config

    ok = {"tensor_parallel_size": 1, "dtype": "float32", "quantization": None,
          "trust_remote_code": False}
    assert check_engine_args(ok) == ok
    with pytest.raises(EngineError, match=r"^model\.engine_args\.tensor_paralel_size: not a "
                                          r"vLLM engine argument; did you mean "
                                          r"'tensor_parallel_size'\?$"):
        check_engine_args({"tensor_paralel_size": 2})
    with pytest.raises(EngineError, match=r"engine_args\.max_model_len: set it with "
                                          r"model\.max_model_len instead"):
        check_engine_args({"max_model_len": 99})
    # in a study config: the file and the dotted field, from `study validate`, exit 2
    from typer.testing import CliRunner

    from icl_search.cli import app

    path = write_config(tmp_path, tiny_model_dir)
    path.write_text(path.read_text().replace(
        "max_model_len = 1024", "max_model_len = 1024\n[model.engine_args]\nquantisation = 'fp8'"))
    assert load_config(path).model.engine_args == {"quantisation": "fp8"}
    with pytest.raises(ConfigError) as exc:
        load_config(path).check_engine()
    assert str(exc.value) == (f"{path.resolve()}: field 'model.engine_args.quantisation': not a "
                              "vLLM engine argument; did you mean 'quantization'?")
    r = CliRunner().invoke(app, ["study", "validate", str(path)])
    assert r.exit_code == 2 and "field 'model.engine_args.quantisation'" in r.output


def test_a_bad_engine_arg_value_is_one_message_before_vllm_starts(tiny_model_dir):
    # `[model.engine_args]` of a study: the value is vLLM's to check; its refusal names the
    # field (the study engine shares the check with `icl-search serve --engine-arg`)
    from icl_search.engines.vllm import _LLMS

    before = len(_LLMS)
    with pytest.raises(EngineError, match=r"^vLLM refused the engine arguments: "
                                          r"SchedulerConfig\.max_num_seqs: Input should be "
                                          r"greater than or equal to 1, got -3$"):
        make_engine(f"vllm:{tiny_model_dir}", max_model_len=1024,
                    engine_args={"max_num_seqs": -3})
    assert len(_LLMS) == before  # no engine was built


def test_engine_args_reach_vllm(tiny_model_dir, tiny_engine):
    from tests.conftest import TINY_KV_BYTES

    # the same settings as the shared tiny engine plus an explicit engine argument: a new
    # vllm.LLM built with it (the cache key holds every argument), generating the same text
    engine = make_engine(f"vllm:{tiny_model_dir}", max_model_len=1024,
                         kv_cache_memory_bytes=TINY_KV_BYTES,
                         engine_args={"max_num_seqs": 4, "tensor_parallel_size": 1})
    assert engine.llm is not tiny_engine.llm
    assert engine.llm.llm_engine.vllm_config.scheduler_config.max_num_seqs == 4
    prompt = "Paris is"
    assert engine.generate([prompt], GREEDY)[0].text == tiny_engine.generate([prompt], GREEDY)[0].text


def test_openai_engine_retries_5xx_through_the_sdk_and_refuses_4xx_at_once():
    import http.server

    hits = {"n": 0}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # /v1/models
            hits["n"] += 1
            code = 503 if "fivexx" in self.headers.get("Authorization", "") else 401
            body = b'{"error": {"message": "busy"}}'
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
    try:
        with pytest.raises(EngineError, match=r"/v1/models unreachable after 3 attempts: "
                                              r"HTTP 503: .*busy"):
            OpenAIEngine(url, "m", api_key="fivexx", max_retries=2, timeout=5)
        assert hits["n"] == 3
        hits["n"] = 0
        with pytest.raises(EngineError, match=r"/v1/models refused the request: HTTP 401"):
            OpenAIEngine(url, "m", api_key="bad", max_retries=2, timeout=5)
        assert hits["n"] == 1
    finally:
        srv.shutdown()
