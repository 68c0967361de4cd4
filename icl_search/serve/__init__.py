"""The OpenAI-compatible server: a base model behind `/v1/chat/completions`, `/v1/completions`,
`/v1/models` and `/health`, answering in the context of a prompt bundle.

Rooms: `app` (create_app: lifespan, errors, API key), `state` (the one `ServerState` and the
request work every route shares), `routes` (the handlers), `chat` (OpenAI messages -> the
parts of a URIAL prompt), `protocol` (request bodies, OpenAI-shaped errors, the engine
interface), `stream` (streaming output cleaning, server-sent events).

How requests become prompts:

- **Chat**: the bundle's system preamble + the examples selected for the last user message +
  the earlier turns as further query/answer blocks + the last user message as the query.
  A `system` (or `developer`) message in the request is **appended** to the preamble after a
  blank line; with `"icl_system_mode": "replace"` in the request body (or the server's
  `system_mode="replace"`) it replaces the preamble. Examples are dropped (farthest from the
  query first) when the prompt plus `max_tokens` would not fit; earlier turns never are: a
  conversation that cannot fit gets a 400 (`context_length_exceeded`).
- **Completions**: the prompt is the user's query, rendered exactly like a one-turn chat.
  `"raw": true` sends the prompt to the model verbatim (no preamble, examples, template stop
  strings or output cleaning), like a plain `vllm serve`. `"echo": true` returns the prompt
  the model saw (the rendered one, unless raw) before the answer: the way to inspect a prompt.
  Each response carries the ids of the examples used in an `X-ICL-Examples` header.
- **A locked context** (`--lock-context`, or `"lock_context": true` in the bundle): a request
  asking to replace the preamble or for a raw prompt gets a 403 (`context_locked`); a system
  message is still appended. Unlocked is the default: the key holder is trusted, as with
  `vllm serve`, where a client sends whatever prompt it likes.
- The answer is cleaned as the study cleaned it (`Template.clean`); while streaming, text that
  could still become a stop string or the closing fence is held back (`stream.StreamCleaner`),
  so the streamed pieces join to exactly the non-streamed answer.
- Defaults come from the bundle (`max_tokens`, temperature, top_p, repetition penalty, seed);
  request fields override them. vLLM extensions accepted: `repetition_penalty`, `top_k`,
  `min_tokens`, `ignore_eos`. Whatever vLLM refuses is a 400 before the response starts.

Concurrency: every request is its own request to vLLM's `AsyncLLM`, whose scheduler batches
all requests in flight (continuous batching); `max_concurrency` caps the requests generating
at once (1 = one at a time, the benchmark's baseline). Errors use OpenAI's shape
`{"error": {"message", "type", "param", "code"}}` and never take the server down. With an API
key, `/docs` and `/openapi.json` are off unless asked for (then behind the key too).
"""

from icl_search.serve.app import create_app
from icl_search.serve.chat import Conversation, ConversationError, render_messages
from icl_search.serve.protocol import APIError, ChatRequest, CompletionRequest, ServingEngine
from icl_search.serve.state import ServerState
from icl_search.serve.stream import StreamCleaner

__all__ = ["APIError", "ChatRequest", "CompletionRequest", "Conversation", "ConversationError",
           "ServerState", "ServingEngine", "StreamCleaner", "create_app", "render_messages"]
