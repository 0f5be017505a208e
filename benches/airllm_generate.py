"""Generation baseline for benches/generate.sh: the real AirLLM package (PyPI `airllm` 4.0.0, CPU,
float32) generating greedily for the first `--limit` prompts of the same prompts file, one prompt
at a time, the way AirLLM streams: every new token is one forward of AirLLM's model over the whole
sequence so far (`use_cache=False`: each forward reads every layer file again and recomputes the
prompt), the most likely next token appended. Model setup is benches/airllm_bench.py's (the GGUF
converted once to a float32 Hugging Face folder; AirLLM splits it into per-layer files); no patch
to AirLLM. Prints one row of generate.sh's table."""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from airllm_bench import ensure_hf_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gguf", type=Path, required=True)
    parser.add_argument("--prompts", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--hf-dir", type=Path, default=Path(".cache/bench/smollm2-hf"))
    parser.add_argument("--layers-dir", type=Path, default=Path(".cache/bench/airllm-layers"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ensure_hf_checkpoint(args.gguf.resolve(), args.hf_dir)
    import airllm

    args.layers_dir.mkdir(parents=True, exist_ok=True)
    model = airllm.AutoModel.from_pretrained(str(args.hf_dir), device="cpu", dtype=torch.float32,
                                             layer_shards_saving_path=str(args.layers_dir))
    layer_bytes = sum(f.stat().st_size for f in Path(model.checkpoint_path).glob("*.safetensors"))
    eos = model.config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    prompts = [json.loads(l)["prompt"] for l in args.prompts.read_text().splitlines() if l.strip()][: args.limit]
    tokens, forwards, seconds = 0, 0, 0.0
    with torch.inference_mode():
        for text in prompts:
            ids = model.tokenizer(text, return_tensors="pt")["input_ids"]
            start = time.perf_counter()
            for _ in range(args.max_tokens):
                logits = model(input_ids=ids, use_cache=False).logits[0, -1]
                forwards += 1
                token = int(logits.argmax())
                tokens += 1
                if token in eos:
                    break
                ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
            seconds += time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    read = layer_bytes * forwards / tokens / 2**20
    print(f"| AirLLM 4.0.0, one prompt at a time ({len(prompts)} prompts, {args.max_tokens} tokens) | {tokens} | "
          f"{seconds:.1f} | {tokens / seconds:.2f} | {rss:.0f} | {read:.1f} |")


if __name__ == "__main__":
    main()
