"""Data stages of multimem: corpus, tokenizer, splits, LM chunks (prepare) and memory tasks (build_memories).

Modules, one concept each:
    sources    document sources (wiki_vital, pile, text_dir) -> Corpus
    tokenizer  byte-level BPE trained on the train split, or Pythia's; encoding to flat token ids
    splits     document splits, leakage check, LM chunks (documents | v1's shuffled_chunks)
    documents  Documents: documents.npz (flat tokens, offsets, domain, split)
    tasks      selection examples, memory-builder text, held-out queries
    manifest   manifest.json with the sha256 of every output
    prepare    stage prepare -> data/prepared/
    memories   stage build_memories -> data/memories/
"""

from multimem.data.documents import Documents
from multimem.data.errors import DataError, LeakageError
from multimem.data.memories import build_memories
from multimem.data.prepare import prepare

__all__ = ["DataError", "Documents", "LeakageError", "build_memories", "prepare"]
