"""Tokenizers (params `data.tokenizer`): a byte-level BPE trained on the train split, or Pythia's.

Both have `<|endoftext|>` (EOS) at id 0; documents are separated by it in LM chunks and builder text.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm import tqdm

from multimem.data.errors import DataError
from multimem.hub import HubUnavailable, require_hub

TOKENIZERS = ("bpe", "pythia")
EOS = "<|endoftext|>"
PYTHIA = "EleutherAI/pythia-70m"
ENCODE_BATCH = 1024


def train_bpe(texts: Sequence[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE with `vocab_size` tokens (EOS = id 0) trained on `texts`; deterministic."""
    if vocab_size < 257:
        raise DataError(f"data.vocab_size={vocab_size}; a byte-level BPE needs >= 257 (256 bytes + EOS)")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer, length=len(texts))
    return tokenizer


def pythia_tokenizer() -> Tokenizer:
    """Pythia's tokenizer (EleutherAI/pythia-70m) from the hub, or from the local cache when the hub is offline."""
    from transformers import AutoTokenizer  # deferred: only this tokenizer needs transformers

    try:
        require_hub(f"data.tokenizer='pythia' ({PYTHIA})")
    except HubUnavailable as offline:
        try:
            return AutoTokenizer.from_pretrained(PYTHIA, local_files_only=True).backend_tokenizer
        except OSError:
            raise HubUnavailable(f"{offline} {PYTHIA} is not in the local cache either.") from None
    return AutoTokenizer.from_pretrained(PYTHIA).backend_tokenizer


def build_tokenizer(kind: str, train_texts: Sequence[str], vocab_size: int) -> Tokenizer:
    """Tokenizer of params kind `data.tokenizer`; `bpe` is trained on `train_texts` only."""
    if kind == "bpe":
        tokenizer = train_bpe(train_texts, vocab_size)
    elif kind == "pythia":
        tokenizer = pythia_tokenizer()
    else:
        raise DataError(f"data.tokenizer={kind!r}; allowed: {', '.join(TOKENIZERS)}")
    if tokenizer.token_to_id(EOS) != 0:
        raise DataError(f"tokenizer {kind!r} has {EOS} at id {tokenizer.token_to_id(EOS)}; expected 0")
    return tokenizer


def encode_documents(tokenizer: Tokenizer, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of all documents, flat: tokens int32 [T], offsets int64 [n_docs + 1] (doc j = tokens[o[j]:o[j+1]])."""
    ids: list[list[int]] = []
    for start in tqdm(range(0, len(texts), ENCODE_BATCH), desc="tokenise", unit="batch", disable=None):
        ids += [e.ids for e in tokenizer.encode_batch(texts[start:start + ENCODE_BATCH], add_special_tokens=False)]
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum([len(x) for x in ids], out=offsets[1:])
    tokens = np.fromiter((t for x in ids for t in x), dtype=np.int32, count=int(offsets[-1]))
    return tokens, offsets
