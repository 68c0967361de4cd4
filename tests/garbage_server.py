"""A scripted OpenAI-compatible judge endpoint on loopback that answers with garbage.

The kind of reply is chosen by a marker in the prompt (`KIND:<name>`, put in the judged
response), so one run mixes good and broken replies: HTTP-level faults (500s, HTML with
status 200, JSON arrays, timeouts, huge bodies), malformed choices and log-probabilities
(strings, +50, NaN), and chat answers that no parser should choke on (8,000 braces, 56 KB of
nested garbage, out-of-range scores). Used by tests/test_judge_backends.py and
bench/reliability.py.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from icl_search.judge.rubric import ALL_ASPECTS

MODEL = "garbage-judge"
#: The client timeout the `timeout` kind is meant to exceed (seconds).
SLOW_SECONDS = 3.0

GOOD_JSON = json.dumps({a: {"rationale": "fine", "score": 4} for a in ALL_ASPECTS})

#: Whole-reply faults, the same on both routes.
HTTP_KINDS = ("http500", "http404", "http429", "html200", "array200", "empty200",
              "truncated_json", "choices_null", "huge_body", "timeout")
#: Faults inside a /v1/completions choice (the logprob judge).
LOGPROB_KINDS = ("choice_not_object", "logprob_string", "logprob_plus50", "logprob_nan",
                 "logprob_mass_above_one", "no_digit", "top_not_list", "text_number",
                 "top_entry_not_object")
#: Faults in a chat answer's content (the JSON-rubric judge).
CHAT_KINDS = ("chat_choice_not_object", "content_number", "bad_json", "braces_8000",
              "nested_garbage_56k", "deep_nesting", "out_of_range", "nan_score", "prose",
              "array_answer", "too_long_answer")
#: A chat endpoint without structured output: 400 when asked for a schema, else a good answer.
KINDS = HTTP_KINDS + LOGPROB_KINDS + CHAT_KINDS + ("rejects_schema", "good")


def kind_of(text: str) -> str:
    m = re.search(r"KIND:(\w+)", text)
    return m.group(1) if m else "good"


def _chat_content(kind: str) -> Any:
    return {
        "bad_json": "{clarity: 4,, 'depth': [",
        "braces_8000": "{" * 8000,
        "nested_garbage_56k": ("x{'a': [1, 2, {\"b\": " * 3000)[:56_000],
        "deep_nesting": '{"a":' * 3000,  # under the size cap: the parser's recursion
        "out_of_range": json.dumps({a: {"score": 9} for a in ALL_ASPECTS}),
        "nan_score": json.dumps({a: {"score": "NaN"} for a in ALL_ASPECTS}),
        "prose": "I think the answer is quite good overall.",
        "array_answer": json.dumps([1, 2, 3]),
        "too_long_answer": GOOD_JSON + " " + "z" * 30_000,
        "content_number": 5,
    }.get(kind, GOOD_JSON)


def _completion_choice(kind: str, index: int) -> Any:
    top = {" 4": -0.3, " 5": -2.0, " 3": -2.5}  # 0.96 of the mass on the digits
    if kind == "choice_not_object":
        return "not an object"
    lp: Any = {"tokens": [" 4"], "top_logprobs": [top]}
    text: Any = " 4"
    if kind == "logprob_string":
        lp["top_logprobs"] = [{" 4": "high"}]
    elif kind == "logprob_plus50":
        lp["top_logprobs"] = [{" 5": 50.0, " 1": -3.0}]
    elif kind == "logprob_nan":
        lp["top_logprobs"] = [{" 5": float("nan")}]
    elif kind == "logprob_mass_above_one":
        lp["top_logprobs"] = [{" 5": -0.01, " 4": -0.02, " 3": -0.03}]
    elif kind == "no_digit":
        lp["top_logprobs"] = [{"a": -0.2, "b": -2.3}]
    elif kind == "top_not_list":
        lp["top_logprobs"] = "abc"
    elif kind == "top_entry_not_object":
        lp["top_logprobs"] = [7]
    elif kind == "text_number":
        text = 4
    return {"index": index, "text": text, "logprobs": lp, "finish_reason": "length"}


class _Handler(BaseHTTPRequestHandler):
    server: GarbageServer

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout kind)
            pass

    def _json(self, obj: Any, status: int = 200) -> None:
        self._send(status, json.dumps(obj).encode())

    def do_GET(self) -> None:
        if self.path.rstrip("/").endswith("/models"):
            self._json({"object": "list", "data": [{"id": MODEL, "object": "model",
                                                    "max_model_len": 4096}]})
        else:
            self._json({"error": {"message": "not found"}}, 404)

    def do_POST(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(n) or b"{}")
        route = self.path.rstrip("/")
        if route.endswith("/tokenize"):
            return self._json({"error": {"message": "no tokenizer here"}}, 404)
        if route.endswith("/chat/completions"):
            texts = [json.dumps(body.get("messages"))]
        else:
            prompt = body.get("prompt")
            texts = prompt if isinstance(prompt, list) else [str(prompt)]
        kinds = [kind_of(t) for t in texts]
        with self.server.lock:
            self.server.requests.append({"route": route, "body": body, "kinds": kinds})
        http = next((k for k in kinds if k in HTTP_KINDS), None)
        if http is not None:
            return self._http_fault(http)
        if route.endswith("/chat/completions"):
            kind = kinds[0]
            if kind == "rejects_schema" and body.get("response_format"):
                return self._json({"error": {"message": "response_format is not supported",
                                             "type": "invalid_request_error"}}, 400)
            if kind == "chat_choice_not_object":
                return self._json({"id": "x", "object": "chat.completion", "model": MODEL,
                                   "choices": ["nope"]})
            return self._json({"id": "x", "object": "chat.completion", "created": 0,
                               "model": MODEL, "choices": [{
                                   "index": 0, "finish_reason": "stop",
                                   "message": {"role": "assistant",
                                               "content": _chat_content(kind)}}],
                               "usage": {"prompt_tokens": 10, "completion_tokens": 10,
                                         "total_tokens": 20}})
        self._json({"id": "x", "object": "text_completion", "model": MODEL,
                    "choices": [_completion_choice(k, i) for i, k in enumerate(kinds)],
                    "usage": {"prompt_tokens": 10 * len(kinds), "completion_tokens": len(kinds)}})

    def _http_fault(self, kind: str) -> None:
        if kind == "http500":
            return self._json({"error": {"message": "boom"}}, 500)
        if kind == "http404":
            return self._json({"error": {"message": "no such route"}}, 404)
        if kind == "http429":
            return self._json({"error": {"message": "slow down"}}, 429)
        if kind == "html200":
            return self._send(200, b"<html><body>Gateway says hi</body></html>", "text/html")
        if kind == "array200":
            return self._json([1, 2, 3])
        if kind == "empty200":
            return self._send(200, b"")
        if kind == "truncated_json":
            return self._send(200, b'{"choices": [{"text": "4", "logpr')
        if kind == "choices_null":
            return self._json({"choices": None})
        if kind == "huge_body":
            return self._send(200, b'{"junk": "' + b"x" * 2_000_000 + b'"}')
        time.sleep(SLOW_SECONDS)  # timeout
        return self._json({"error": {"message": "too late"}}, 504)


class GarbageServer(ThreadingHTTPServer):
    """`with GarbageServer() as s: s.url` -> http://127.0.0.1:PORT/v1; `s.requests` logs."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()
