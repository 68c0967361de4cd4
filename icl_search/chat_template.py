"""A fixed-set bundle as a Jinja chat template (`export --format chat-template`), for
`vllm serve MODEL --chat-template FILE` or `tokenizer.apply_chat_template(..., chat_template=)`.

The template renders exactly what `Bundle.prepare` renders for the same messages: the preamble
(system messages appended after a blank line, as the bundle's "append" mode), the example
blocks, earlier user/assistant turns as further query/answer blocks, then the last user
message's query block, open for the answer. The context is embedded as Jinja string literals,
so no text of the bundle can be read as template syntax.
"""

from __future__ import annotations

import json

from icl_search.bundle import Bundle, BundleError

NO_CHAT_TEMPLATE = ("a retrieval bundle chooses examples per query, which a static chat "
                    "template cannot do")

_BODY = r"""
{%- set ns = namespace(extra=[]) -%}
{%- for m in messages -%}
  {%- if m['role'] == 'system' and m['content'] is string and m['content'].strip() -%}
    {%- set ns.extra = ns.extra + [m['content'].strip('\n')] -%}
  {%- endif -%}
{%- endfor -%}
{%- if preamble -%}
  {%- set system = ([preamble.rstrip('\n')] + ns.extra) | join('\n\n') -%}
{%- else -%}
  {%- set system = ns.extra | join('\n\n') -%}
{%- endif -%}
{%- if system -%}{{ system.rstrip('\n') + '\n' }}{%- endif -%}
{{ examples }}
{%- for m in messages if m['role'] != 'system' -%}
  {%- if m['role'] == 'user' -%}
    {{ '\n' + qm + '\n' + fence + '\n' + m['content'] + '\n' + fence + '\n\n' + am + '\n' + fence + '\n' }}
  {%- elif m['role'] == 'assistant' -%}
    {{ m['content'] + '\n' + fence + '\n' }}
  {%- endif -%}
{%- endfor -%}
"""


def _literal(text: str) -> str:
    # Jinja reads a string literal's backslash escapes as Python does: JSON's are a subset
    return json.dumps(text, ensure_ascii=False)


def to_chat_template(bundle: Bundle) -> str:
    """The bundle's context as a Jinja chat template (fixed sets only: `BundleError` else)."""
    if bundle.mode != "fixed":
        raise BundleError(f"chat template: {NO_CHAT_TEMPLATE}")
    t = bundle.template
    examples = t.render_context("", bundle.examples or [])
    p = bundle.provenance
    origin = f"study {p.study!r}, trial {p.trial}" if p.study else "a bundle"
    note = (f"icl-search: the URIAL context of {origin} ({len(bundle.examples or [])} "
            f"examples) for {bundle.model}").replace("#}", "# }")
    head = f"{{#- {note} -#}}\n"
    sets = "".join(f"{{%- set {name} = {_literal(value)} -%}}\n" for name, value in (
        ("preamble", bundle.system), ("examples", examples), ("qm", t.query_marker),
        ("am", t.answer_marker), ("fence", t.fence)))
    return head + sets + _BODY.lstrip("\n")
