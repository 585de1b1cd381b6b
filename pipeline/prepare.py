"""Stage prepare: documents, tokenizer, document-level splits and LM chunks -> data/prepared/.

    python pipeline/prepare.py --params params.yaml [--out data/prepared]
"""

from __future__ import annotations

import argparse
import sys
import time

from multimem.data import prepare
from multimem.params import cli_main, load_params


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", default="data/prepared")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    start = time.perf_counter()
    m = prepare(params["data"], args.out)
    docs = ", ".join(f"{s} {sum(c.values())}" for s, c in m["n_documents"].items())
    chunks = ", ".join(f"{s} {n}" for s, n in m["n_chunks"].items())
    print(f"prepare: {m['source']}, {len(m['domains'])} domains, documents {docs}; {sum(m['n_tokens'].values())} "
          f"tokens; {m['tokenizer']['kind']} vocab {m['tokenizer']['vocab_size']}; chunks of {m['chunk_len']}: "
          f"{chunks}; leaky={m['leakage']['leaky']}; {time.perf_counter() - start:.1f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
