"""Stage build_memories: selection examples, memory-builder text and held-out queries on a small sample."""

import hashlib
import json
import runpy
from pathlib import Path

import numpy as np
import pytest
import yaml

from multimem.data import DataError, Documents, build_memories, prepare
from multimem.integrity import IntegrityError
from pipeline_helpers import BASE_PARAMS

ROOT = Path(__file__).resolve().parents[1]
N, SEG, TGT = 11, 16, 16


@pytest.fixture(scope="module")
def params():
    p = yaml.safe_load(BASE_PARAMS.read_text())
    p["data"].update(max_documents=800, vocab_size=512, chunk_len=32)
    p["memories"].update(task="continuation", num_memories=N, segment_len=SEG, target_len=TGT, examples_train=200,
                         examples_val=30, examples_test=30, builder_tokens=64, queries_per_domain=5, query_len=16)
    p["model"]["memory"]["num_memories"] = N
    return p


@pytest.fixture(scope="module")
def built(tmp_path_factory, params):
    tmp = tmp_path_factory.mktemp("memories")
    prepare(params["data"], tmp / "prepared")
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    main = runpy.run_path(str(ROOT / "pipeline" / "build_memories.py"))["main"]
    assert main(["--params", str(tmp / "params.yaml"), "--prepared", str(tmp / "prepared"),
                 "--out", str(tmp / "memories")]) == 0
    return tmp, Documents.load(tmp / "prepared" / "documents.npz")


def load(path: Path) -> dict:
    with np.load(path) as f:
        return dict(f)


def occurs_in(window: np.ndarray, doc: np.ndarray) -> bool:
    if len(doc) < len(window):
        return False
    views = np.lib.stride_tricks.sliding_window_view(doc, len(window))
    return bool((views == window).all(axis=1).any())


def source_docs(window: np.ndarray, docs: Documents, candidates: np.ndarray) -> list[int]:
    return [j for j in candidates.tolist() if occurs_in(window, docs.doc(j))]


@pytest.mark.parametrize("code, split", [(0, "train"), (1, "val"), (2, "test")])
def test_target_follows_the_true_segment_in_its_own_document(built, code, split):
    tmp, docs = built
    ex = load(tmp / "memories" / f"selection_{split}.npz")
    e = len(ex["true_slot"])
    assert ex["context"].shape == (e, N, SEG) and ex["context"].dtype == np.int32
    assert ex["target"].shape == (e, TGT + 1) and ex["target"].dtype == np.int32
    assert ex["true_slot"].dtype == np.int64 and ex["slot_domain"].dtype == np.int16
    eos = json.loads((tmp / "prepared" / "manifest.json").read_text())["tokenizer"]["eos_id"]
    used = []
    for i in range(e):
        slot, domains = ex["true_slot"][i], ex["slot_domain"][i]
        assert len(set(domains.tolist())) == N  # one slot per distinct domain
        assert ex["target"][i, 0] == eos  # no shortcut: the target does not start with the segment's last token
        passage = np.concatenate([ex["context"][i, slot], ex["target"][i, 1:]])  # segment then target, contiguous
        own = np.flatnonzero((docs.split == code) & (docs.domain == domains[slot]))
        found = source_docs(passage, docs, own)
        assert found, f"example {i}: target does not follow its segment in a document"
        used.append(found[0])
        other = 0 if slot else 1
        own_other = np.flatnonzero((docs.split == code) & (docs.domain == domains[other]))
        assert source_docs(ex["context"][i, other], docs, own_other)  # distractor from its own domain and split
    assert len(set(used)) == len(used)  # target documents drawn without replacement


def test_true_slot_covers_every_slot(built):
    tmp, _ = built
    manifest = json.loads((tmp / "memories" / "manifest.json").read_text())
    for split, n in (("train", 200), ("val", 30), ("test", 30)):
        slots = load(tmp / "memories" / f"selection_{split}.npz")["true_slot"]
        counts = np.bincount(slots, minlength=N)
        assert len(slots) == n and counts.sum() == n and manifest["true_slot_counts"][split] == counts.tolist()
    assert (np.bincount(load(tmp / "memories" / "selection_train.npz")["true_slot"], minlength=N) > 0).all()


def test_builder_text_is_train_text_and_queries_are_held_out(built):
    tmp, docs = built
    b = load(tmp / "memories" / "builder.npz")
    assert b["slot_tokens"].shape == (N, 64) and b["slot_domain"].tolist() == list(range(N))
    assert b["queries"].shape == (len(b["query_domain"]), 16) and b["query_domain"].dtype == np.int16
    for i, d in enumerate(b["slot_domain"].tolist()):
        first = b["slot_tokens"][i][: np.argmax(b["slot_tokens"][i] == 0)]  # first document before EOS
        assert source_docs(first, docs, np.flatnonzero((docs.split == 0) & (docs.domain == d)))
    train_docs = np.flatnonzero(docs.split == 0)
    for q, d in zip(b["queries"], b["query_domain"].tolist()):
        assert source_docs(q, docs, np.flatnonzero((docs.split == 2) & (docs.domain == d)))
        assert not source_docs(q, docs, train_docs)
        assert not any(occurs_in(q, s) for s in b["slot_tokens"])
    counts = json.loads((tmp / "memories" / "manifest.json").read_text())["queries"]["per_domain"]
    assert sum(counts.values()) == len(b["queries"]) and max(counts.values()) == 5


def test_two_runs_are_byte_identical(built, params):
    tmp, _ = built
    build_memories(params["memories"], tmp / "prepared", tmp / "again")
    digest = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp / "again").iterdir()}
    assert digest == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp / "memories").iterdir()}


def test_changed_input_is_refused(built, params, tmp_path):
    tmp, _ = built
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    for p in (tmp / "prepared").iterdir():
        (prepared / p.name).write_bytes(p.read_bytes())
    (prepared / "domains.json").write_text('["changed"]')
    with pytest.raises(IntegrityError, match=r"prepared/domains.json was changed or corrupted.*rerun stage prepare"):
        build_memories(params["memories"], prepared, tmp_path / "memories")
    assert not (tmp_path / "memories").exists()


def test_more_memories_than_domains_is_a_clear_error(built, params):
    tmp, _ = built
    with pytest.raises(DataError, match=r"memories.num_memories=12; allowed 1..11"):
        build_memories({**params["memories"], "num_memories": 12}, tmp / "prepared", tmp / "never")


def test_fewer_memories_than_domains_choose_domains_per_example(built, params, tmp_path):
    tmp, _ = built
    manifest = build_memories({**params["memories"], "num_memories": 4}, tmp / "prepared", tmp_path / "m")
    slot_domain = load(tmp_path / "m" / "selection_train.npz")["slot_domain"]
    assert slot_domain.shape == (200, 4) and len(np.unique(slot_domain)) == 11
    assert manifest["memory_domains"] == manifest["domains"][:4]


def test_shuffled_chunks_data_gets_a_document_split_for_the_tasks(params, tmp_path):
    v1 = yaml.safe_load((ROOT / "experiments" / "landmark_v1-demo.yaml").read_text())
    prepare({**v1["data"], "max_documents": 800, "vocab_size": 512}, tmp_path / "prepared")
    manifest = build_memories({**v1["memories"], "examples_train": 50, "examples_val": 20}, tmp_path / "prepared",
                              tmp_path / "memories")
    assert manifest["document_split"].startswith("by document")
    assert manifest["examples"] == {"train": 50, "val": 20, "test": 0} and manifest["queries"]["split"] == "val"
