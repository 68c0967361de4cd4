from icl_search.prompt import Budget, Template

SYSTEM = "# Instructions\n\nYou are a helpful assistant.\n"
EXAMPLES = [("What is 1+1?", "Hi! 1 + 1 = 2."), ("Name a fruit.", "Sure! An apple.")]


def test_render_is_the_urial_layout():
    t = Template()
    prompt = t.render(SYSTEM, EXAMPLES, "Why is the sky blue?")
    assert prompt == (
        "# Instructions\n\nYou are a helpful assistant.\n"
        "\n# Query:\n```\nWhat is 1+1?\n```\n\n# Answer:\n```\nHi! 1 + 1 = 2.\n```\n"
        "\n# Query:\n```\nName a fruit.\n```\n\n# Answer:\n```\nSure! An apple.\n```\n"
        "\n# Query:\n```\nWhy is the sky blue?\n```\n\n# Answer:\n```\n"
    )
    # the URIAL repository's assembly of a context file ending in a newline
    context = t.render_context(SYSTEM, EXAMPLES)
    assert prompt == context + "\n# Query:\n```\nWhy is the sky blue?\n```\n" + "\n# Answer:\n```\n"


def test_markers_and_fences_are_fields():
    t = Template(query_marker="### User:", answer_marker="### Assistant:", fence="~~~",
                 stop=("### User",))
    p = t.render("", [("a", "b")], "c")
    assert p == "\n### User:\n~~~\na\n~~~\n\n### Assistant:\n~~~\nb\n~~~\n\n### User:\n~~~\nc\n~~~\n\n### Assistant:\n~~~\n"
    assert Template.from_dict(t.to_dict()) == t


def test_clean_cuts_at_stop_and_strips_the_answer_fence():
    t = Template()
    assert t.clean("Hello there!\n```\n\n# Query:\n```\nnext") == "Hello there!"
    assert t.clean("  Fine.\n```\n# User: more") == "Fine."
    # a code block inside the answer keeps its fences; only the block's own closing fence goes
    code = "Use this:\n```python\nprint(1)\n```\n```"
    assert t.clean(code) == "Use this:\n```python\nprint(1)\n```"
    assert t.clean("```\nleading fence\n```") == "leading fence"
    # a closed answer block followed by a new heading: the model has moved on
    assert t.clean("Count them:\n```\n\n# Explanation:\nThe first line") == "Count them:"
    kept = "Run:\n```bash\nls\n```\n\n# not a heading after a code block"
    assert t.clean(kept + "\n```\n\n# Explanation: x") == kept


def test_budget_drops_farthest_examples_first():
    count = lambda s: len(s.split())
    t = Template()
    exs = [("far " * 50, "x " * 50), ("mid " * 10, "y"), ("near", "z")]
    full = count(t.render(SYSTEM, exs, "q"))
    b = Budget(count, context_window=full + 10)
    fit = b.fit(t, SYSTEM, exs, "q", max_tokens=10)
    assert fit.ok and fit.kept == exs and not fit.dropped
    b = Budget(count, context_window=full - 5)
    fit = b.fit(t, SYSTEM, exs, "q", max_tokens=10)
    assert fit.ok and fit.dropped == exs[:1] and fit.kept == exs[1:]
    assert fit.prompt_tokens + 10 <= full - 5


def test_budget_caches_blocks_but_not_whole_prompts():
    # A server budgets every request's prompt: whole prompts must not pile up in the cache.
    t = Template()
    exs = [(f"question {i}", f"answer {i} " * 20) for i in range(3)]
    counted: list[str] = []

    def count(s: str) -> int:
        counted.append(s)
        return len(s.split())

    b = Budget(count, context_window=10_000)
    prompts = [b.fit(t, SYSTEM, exs, f"query number {i}", max_tokens=16).prompt
               for i in range(50)]
    assert all(p is not None for p in prompts)
    # cached: the preamble, the 3 examples and the 50 query blocks; no whole prompt
    assert b._count.cache_info().currsize == 1 + 3 + 50
    assert sum(p in counted for p in prompts) == 50  # each prompt counted exactly, once
    assert len(counted) == 1 + 3 + 50 + 50


def test_budget_fails_a_query_that_cannot_fit():
    count = lambda s: len(s.split())
    b = Budget(count, context_window=30)
    fit = b.fit(Template(), SYSTEM, [("a", "b")], "word " * 40, max_tokens=5)
    assert not fit.ok
    assert "exceeds the context window of 30 tokens" in fit.error
    assert Budget(count, 30).fit(Template(), "", [], "q", max_tokens=30).error.startswith(
        "max_tokens=30 leaves no room")
