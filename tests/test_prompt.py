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


# -- the answer's end and its hygiene (issue 24: the shapes a base model produced) ----------
NOTE = "Paris is the capital of France.\n```\n\n**Note:** I am an AI and may be wrong.\n"
INVENTED = ("Paris.\n```\n\n# Question:\n```\nAnd Spain?\n```\n\n# Answer:\n```\nMadrid.\n```\n")
LOOP = "Drink water. " + "I am not a doctor. " * 9 + "I am not"


def test_the_answer_ends_at_its_closing_fence_without_a_heading_after_it():
    t = Template()
    assert t.clean(NOTE) == "Paris is the capital of France."
    _, h = t.hygiene(NOTE, "length")
    assert h.leaked == 1 and h.max_tokens == 1 and not h.fails
    # an invented exchange, with or without the closing fence before it
    assert t.clean(INVENTED) == "Paris."
    assert t.clean("Paris.\n\n## question: and Spain?\nMadrid.") == "Paris."
    # a code block inside the answer is kept: its closing fence leaves an even count
    code = "Run:\n```bash\nls\n```\nDone.\n```\n\n**Note:** x"
    assert t.clean(code) == "Run:\n```bash\nls\n```\nDone."
    assert t.hygiene(code)[1].leaked == 1
    # a clean stop (blank space after the fence) is no leak
    _, h = t.hygiene("Fine.\n```\n\n", "stop")
    assert h == type(h)()


def test_stop_strings_are_the_templates_markers_and_their_near_variants():
    t = Template()
    assert set(t.stop) == {"# Query", "# Answer", "# Question", "# User", "# Instruction"}
    other = Template(query_marker="### Human:", answer_marker="### Bot:")
    assert {"### Human", "### Bot", "### Question", "### Instruction"} <= set(other.stop)
    assert other.clean("Hi.\n\n### Human: more") == "Hi."
    # old bundles stored only two stop strings: the variants are added on load
    old = Template.from_dict({"stop": ["# Query", "# User"]})
    assert old == t and Template.from_dict(t.to_dict()) == t
    # a marker without a heading prefix stops only at a line start
    bare = Template(query_marker="Q:", answer_marker="A:")
    assert set(bare.stop) == {"\nQ:", "\nA:"}


def test_a_repetition_loop_is_cut_back_to_its_first_occurrence():
    t = Template()
    text, h = t.hygiene(LOOP, "length")
    assert text == "Drink water. I am not a doctor." and h.loop == 1 and not h.fails
    lines = "Steps:\n" + "- Mix the flour and the water.\n" * 5 + "- Mix the"
    assert t.clean(lines) == "Steps:\n- Mix the flour and the water."
    assert t.clean("no no no no no no no no no no") == "no"
    # repeated short list markers, and a word said twice, are not loops
    ok = "Two steps: first, rinse; second, rinse again.\n- a\n- a\n- a"
    assert t.hygiene(ok)[1].loop == 0


def test_an_answer_still_broken_after_cleaning_fails_hygiene():
    t = Template()
    text, h = t.hygiene("Use:\n```python\nprint(1)", "length")  # a code block never closed
    assert text == "Use:\n```python\nprint(1)" and h.unbalanced == 1 and h.fails
    assert t.hygiene(None, "error") == (None, None)


def test_settled_text_is_never_taken_back_by_the_final_cleaning():
    # streaming (serve) sends `settled` as it grows: the shapes in random pieces
    import random

    pieces = ["```", "\n", " ", "# Question:", "# Qu", "## question", "**Note:** ", "abc",
              "I am a doctor. ", "I am ", "Same line again here\n", "```python\n", "x y"]
    t = Template()
    rng = random.Random(1)
    for _ in range(3000):
        raw = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        final = t.clean(raw)
        for i in range(len(raw) + 1):
            assert final.startswith(t.settled(raw[:i])), (raw, i)
    assert t.settled("Hello there") == "Hello there"
    assert t.settled("Hello\nI am a doctor. I am a doctor.") == "Hello\nI am a doctor."
