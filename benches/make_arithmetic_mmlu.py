"""Writes a small MMLU-style dataset of short arithmetic questions, in MMLU's CSV layout.

    python3 benches/make_arithmetic_mmlu.py OUT_DIR [--questions 200] [--seed 0]

Creates OUT_DIR/test/arithmetic_test.csv (question, A, B, C, D, answer letter; no header) and
OUT_DIR/dev/arithmetic_dev.csv (5 rows). The prompts are as short as an MMLU prompt can be (about
45 tokens with SmolLM2's tokenizer), which keeps the bigger-than-memory run's compute small while
every layer of a model larger than RAM still has to stream from disk. Deterministic for a seed.
"""

import argparse
import csv
import random
from pathlib import Path


def question(rng: random.Random) -> list[str]:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    answer = a + b
    wrong = set()
    while len(wrong) < 3:
        candidate = answer + rng.choice([-11, -10, -2, -1, 1, 2, 9, 10])
        if candidate != answer:
            wrong.add(candidate)
    choices = [answer, *sorted(wrong)]
    rng.shuffle(choices)
    letter = "ABCD"[choices.index(answer)]
    return [f"What is {a} + {b}?", *map(str, choices), letter]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    for split, rows in (("test", args.questions), ("dev", 5)):
        path = args.out / split / f"arithmetic_{split}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as f:
            csv.writer(f).writerows(question(rng) for _ in range(rows))
    print(f"wrote {args.questions} questions to {args.out}")


if __name__ == "__main__":
    main()
