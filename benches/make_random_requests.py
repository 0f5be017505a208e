"""Writes a random requests file (JSON lines) for trying the benches without a real task.

Each line is {"tokens": [...], "positions": [len - 1]}: `--count` sequences whose lengths are drawn
uniformly from --min-len..--max-len and token ids from 0..--vocab - 1, fixed seed. Standard library
only. Example (SmolLM2's vocabulary is 49152):

    python3 benches/make_random_requests.py --count 64 --min-len 100 --max-len 140 \
        --vocab 49152 --seed 0 --out .cache/bench-random-64.jsonl
"""

import argparse
import json
import random


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--count", type=int, default=64)
    p.add_argument("--min-len", type=int, default=100)
    p.add_argument("--max-len", type=int, default=140)
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    if not 1 <= a.min_len <= a.max_len or a.count < 1 or a.vocab < 1:
        p.error("need count >= 1, vocab >= 1 and 1 <= min-len <= max-len")
    rng = random.Random(a.seed)
    with open(a.out, "w") as f:
        for _ in range(a.count):
            n = rng.randint(a.min_len, a.max_len)
            tokens = [rng.randrange(a.vocab) for _ in range(n)]
            f.write(json.dumps({"tokens": tokens, "positions": [n - 1]}) + "\n")


if __name__ == "__main__":
    main()
