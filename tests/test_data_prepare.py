"""Stage prepare: end to end on a small wiki_vital sample, splits, leakage, v1's shuffled chunks, determinism."""

import hashlib
import json
import runpy
from pathlib import Path

import numpy as np
import pytest
import yaml

from multimem.data import Documents, LeakageError
from multimem.data.splits import check_leakage, shuffled_chunks, split_documents, text_hash
from multimem.data.tokenizer import PYTHIA, build_tokenizer
from multimem.hub import HubUnavailable
from pipeline_helpers import BASE_PARAMS

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"max_documents": 300, "vocab_size": 512, "chunk_len": 32}


def small_params(tmp_path: Path, preset: str | Path = BASE_PARAMS, **data) -> Path:
    params = yaml.safe_load((ROOT / preset).read_text())
    params["data"].update(SMALL, **data)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def run_prepare(tmp_path: Path, out: str = "prepared", preset: str | Path = BASE_PARAMS, **data) -> dict:
    main = runpy.run_path(str(ROOT / "pipeline" / "prepare.py"))["main"]
    assert main(["--params", str(small_params(tmp_path, preset, **data)), "--out", str(tmp_path / out)]) == 0
    return json.loads((tmp_path / out / "manifest.json").read_text())


def file_hashes(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def pieces(chunks: np.ndarray, eos_id: int = 0) -> list[tuple]:
    """Complete EOS-terminated pieces of the stream the chunks were cut from (last, cut piece dropped)."""
    stream = chunks.reshape(-1)
    ends = np.flatnonzero(stream == eos_id)
    return [tuple(stream[a + 1:b]) for a, b in zip(np.r_[-1, ends[:-1]], ends)]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("prepare")
    return tmp_path / "prepared", run_prepare(tmp_path)


def test_wiki_vital_end_to_end_outputs_match_the_contract(prepared):
    out, manifest = prepared
    assert sorted(p.name for p in out.iterdir()) == ["documents.npz", "domains.json", "lm_test.npy", "lm_train.npy",
                                                      "lm_val.npy", "manifest.json", "tokenizer.json"]
    docs = Documents.load(out / "documents.npz")
    assert (docs.tokens.dtype, docs.offsets.dtype, docs.domain.dtype, docs.split.dtype) == (
        np.int32, np.int64, np.int16, np.int8)
    assert len(docs) == 300 and docs.offsets[-1] == len(docs.tokens) and set(docs.split.tolist()) == {0, 1, 2}
    assert json.loads((out / "domains.json").read_text()) == manifest["domains"] and len(manifest["domains"]) == 11
    for split in ("train", "val", "test"):
        chunks = np.load(out / f"lm_{split}.npy")
        assert chunks.dtype == np.int32 and chunks.shape == (manifest["n_chunks"][split], 32)
    assert sum(sum(c.values()) for c in manifest["n_documents"].values()) == 300
    assert manifest["tokenizer"]["vocab_size"] == 512 and manifest["tokenizer"]["eos_id"] == 0
    n_train = sum(manifest["n_documents"]["train"].values())
    assert manifest["tokenizer"]["trained_on"] == f"{n_train} documents (train split)"
    assert manifest["leakage"]["leaky"] is False
    assert manifest["files"] == {k: v for k, v in file_hashes(out).items() if k != "manifest.json"}


def test_lm_chunks_of_a_split_hold_only_that_splits_documents(prepared):
    out, _ = prepared
    docs = Documents.load(out / "documents.npz")
    by_split = [{tuple(docs.doc(j)) for j in np.flatnonzero(docs.split == s)} for s in range(3)]
    for s, name in enumerate(("train", "val", "test")):
        found = pieces(np.load(out / f"lm_{name}.npy"))
        assert len(found) >= 0.8 * len(by_split[s])  # all but the documents in the dropped remainder
        assert set(found) <= by_split[s]


def test_split_documents_is_per_domain_and_seeded():
    domain = np.repeat(np.arange(3, dtype=np.int16), [10, 20, 40])
    split = split_documents(domain, 0.1, 0.2, seed=5)
    for d, n in enumerate([10, 20, 40]):
        assert np.bincount(split[domain == d], minlength=3).tolist() == [n - round(n * 0.1) - round(n * 0.2),
                                                                         round(n * 0.1), round(n * 0.2)]
    assert np.array_equal(split, split_documents(domain, 0.1, 0.2, seed=5))
    assert not np.array_equal(split, split_documents(domain, 0.1, 0.2, seed=6))


def test_planted_duplicate_across_splits_is_caught():
    texts = ["The cat sat.", "A dog ran.", "Birds fly south.", "the  CAT sat."]  # 0 and 3 differ in case/space
    hashes = [text_hash(t) for t in texts]
    assert check_leakage(hashes, np.array([0, 1, 2, 0]))["leaky"] is False
    with pytest.raises(LeakageError, match="1 train/test"):
        check_leakage(hashes, np.array([0, 1, 2, 2]))


def test_duplicate_documents_are_dropped_before_splitting(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    for d in ("one", "two"):
        docs = [" ".join(words[(i + k) % 10] for k in range(30)) + f" {d} {i}." for i in range(20)]
        (corpus / f"{d}.txt").write_text("\n\n".join(docs + ["Shared text in both domains."]))
    manifest = run_prepare(tmp_path, source="text_dir", text_dir=str(corpus), max_documents=0, vocab_size=300)
    assert manifest["leakage"]["duplicate_documents_dropped"] == 1
    assert sum(sum(c.values()) for c in manifest["n_documents"].values()) == 41
    assert manifest["source"] == "text_dir" and manifest["domains"] == ["one", "two"]


def test_shuffled_chunks_reproduce_v1_construction():
    stream = np.arange(1003, dtype=np.int32)
    chunks, leakage = shuffled_chunks(stream, chunk_len=10, max_chunks=50, val_fraction=0.1, seed=3)
    contiguous = stream[:500].reshape(50, 10)  # the first 50 chunks, no separators
    order = np.random.default_rng(3).permutation(50)
    assert np.array_equal(chunks["train"], contiguous[order[:45]])
    assert np.array_equal(chunks["val"], contiguous[order[45:]])
    assert chunks["test"].shape == (0, 10)
    train = set(order[:45].tolist())
    val = order[45:].tolist()
    assert leakage["leaky"] is True
    assert leakage["val_chunks_preceded_by_train"] == np.mean([i - 1 in train for i in val])
    assert leakage["val_chunks_with_a_train_neighbour"] == np.mean([(i - 1 in train) or (i + 1 in train) for i in val])


def test_shuffled_chunks_stage_cuts_the_unseparated_document_stream(tmp_path):
    manifest = run_prepare(tmp_path, preset="experiments/landmark_v1-demo.yaml", max_chunks=100)
    out = tmp_path / "prepared"
    docs = Documents.load(out / "documents.npz")
    assert (docs.split == -1).all() and manifest["n_documents"].keys() == {"unsplit"}
    L = manifest["chunk_tokens"]  # v1: chunk_len + 1 tokens per chunk, so that inputs are chunk_len long
    assert L == 33
    windows = {tuple(docs.tokens[k * L:(k + 1) * L]): k for k in range(100)}
    train, val = np.load(out / "lm_train.npy"), np.load(out / "lm_val.npy")
    assert (len(train), len(val), len(np.load(out / "lm_test.npy"))) == (90, 10, 0)
    assert sorted(windows[tuple(c)] for c in np.concatenate([train, val])) == list(range(100))
    assert manifest["leakage"]["leaky"] is True and manifest["leakage"]["val_chunks_preceded_by_train"] > 0.5


def test_two_runs_are_byte_identical(tmp_path, prepared):
    run_prepare(tmp_path, out="again")
    assert file_hashes(tmp_path / "again") == file_hashes(prepared[0])


def test_max_chunks_caps_the_total_and_keeps_split_shares(tmp_path, prepared):
    manifest = run_prepare(tmp_path, max_chunks=200)
    full = prepared[1]["n_chunks"]
    assert sum(manifest["n_chunks"].values()) == 200
    for name in ("val", "test"):
        assert manifest["n_chunks"][name] == full[name] * 200 // sum(full.values())


def test_corpus_error_exits_2_without_output(tmp_path, capsys):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "notes.md").write_text("no .txt here")
    params = small_params(tmp_path, source="text_dir", text_dir=str(tmp_path / "corpus"))
    main = runpy.run_path(str(ROOT / "pipeline" / "prepare.py"))["main"]
    with pytest.raises(SystemExit) as exit_:
        main(["--params", str(params), "--out", str(tmp_path / "p")])
    assert exit_.value.code == 2
    assert "holds no non-empty .txt documents" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_pythia_tokenizer_offline_fails_clearly(monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    if isinstance(huggingface_hub.try_to_load_from_cache(PYTHIA, "tokenizer.json"), str):
        pytest.skip("pythia-70m's tokenizer is in the local cache, so offline use succeeds")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnavailable, match="HF_HUB_OFFLINE.*not in the local cache"):
        build_tokenizer("pythia", [], 0)
