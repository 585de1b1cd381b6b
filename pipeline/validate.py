"""Stage validate: params.yaml checked (schema, cross-field rules, the memory this machine has) before any
other stage starts -> data/validated.json.

Every other stage depends on data/validated.json, so under `dvc repro` a bad parameter stops the DAG here,
before DVC removes any stage's outputs. The stamp's content never changes (a passing check reruns nothing
downstream) and it is rewritten only when missing, so Snakemake sees no newer input either.

    python pipeline/validate.py --params params.yaml [--out data/validated.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from multimem.atomic import write_text_atomic
from multimem.params import ParamsError, cli_main, load_params
from multimem.resources import memory_problems

STAMP = json.dumps({"params": "valid", "checked_by": "pipeline/validate.py"}, indent=2) + "\n"


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", default="data/validated.json")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    problems = memory_problems(params)
    if problems:
        raise ParamsError(problems, args.params)
    out = Path(args.out)
    if not out.is_file() or out.read_text(encoding="utf-8") != STAMP:
        write_text_atomic(out, STAMP)
    t = params["train"]
    print(f"validate: {args.params} is valid ({len(t['variants'])} variants × {len(t['seeds'])} seeds) -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
