"""Stage build_memories: selection examples, memory-builder text and held-out queries -> data/memories/.

    python pipeline/build_memories.py --params params.yaml [--prepared data/prepared] [--out data/memories]
"""

from __future__ import annotations

import argparse
import sys
import time

from multimem.data import build_memories
from multimem.params import cli_main, load_params


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--prepared", default="data/prepared")
    parser.add_argument("--out", default="data/memories")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    start = time.perf_counter()
    m = build_memories(params["memories"], args.prepared, args.out)
    examples = ", ".join(f"{s} {n}" for s, n in m["examples"].items())
    print(f"build_memories: {len(m['memory_domains'])} memories; selection examples {examples}; "
          f"{m['queries']['total']} {m['queries']['split']} queries; {time.perf_counter() - start:.1f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
