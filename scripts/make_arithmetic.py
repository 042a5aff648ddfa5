"""Write the synthetic arithmetic task (llmpost.benchmarks.math.data.arithmetic_problems) as MATH-format JSON-lines files.

    python scripts/make_arithmetic.py --out_dir runs/arithmetic               # train.jsonl (400) + test.jsonl (64)
    llmpost eval math --data_file runs/arithmetic/test.jsonl --model_name_or_path ... --output_dir ...

The recipes generate the same rows in memory (``task: arithmetic``); the files are for ``llmpost eval math`` and for
use outside llmpost. Same seed and sizes, same files.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from llmpost.benchmarks.math.data import arithmetic_problems
from llmpost.utils import atomic_write_text


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_operand", type=int, default=30)
    parser.add_argument("--train_size", type=int, default=400)
    parser.add_argument("--test_size", type=int, default=64)
    args = parser.parse_args(argv)
    for split, size in (("train", args.train_size), ("test", args.test_size)):
        rows = arithmetic_problems(split, size, args.seed, args.max_operand)
        path = Path(args.out_dir) / f"{split}.jsonl"
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
        print(f"{path}: {len(rows)} problems")


if __name__ == "__main__":
    main()
