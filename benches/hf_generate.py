"""Baseline for benches/generate.sh: Hugging Face transformers' batched greedy `generate` (float32,
resident, left padding, one batch of every prompt) on the same prompts and token budget; prints
one row of that script's table (tokens/s counts new tokens up to each sequence's end-of-text)."""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.dont_write_bytecode = True

import torch
import transformers


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gguf", type=Path, required=True)
    parser.add_argument("--prompts", type=Path, required=True)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(args.gguf.parent), gguf_file=args.gguf.name, dtype=torch.float32
    ).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(args.gguf.parent), gguf_file=args.gguf.name)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    prompts = [json.loads(line)["prompt"] for line in args.prompts.read_text().splitlines() if line.strip()]
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    start = time.time()
    with torch.no_grad():
        out = model.generate(**batch, do_sample=False, max_new_tokens=args.max_tokens, pad_token_id=tokenizer.pad_token_id)
    seconds = time.time() - start
    new = out[:, batch["input_ids"].shape[1]:].tolist()
    tokens = 0
    for row in new:
        for token in row:
            tokens += 1
            if token in eos:
                break
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"| transformers {transformers.__version__} f32, batch {len(prompts)} | {tokens} | {seconds:.1f} | {tokens / seconds:.1f} | {rss:.0f} | - |")


if __name__ == "__main__":
    main()
