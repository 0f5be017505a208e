#!/usr/bin/env bash
# The project's Python environments, for the fixture generators and the benchmark baselines:
# creates (once) a git-ignored venv under .cache with pinned versions and prints its python's path.
#
#   py=$(scripts/venv.sh) && "$py" tests/fixtures/make_tiny_models.py      # .cache/venv
#   py=$(scripts/venv.sh venv-airllm airllm==4.0.0 ...)                     # .cache/venv-airllm:
#                                                                            # the pins below + these
#   py=$(scripts/venv.sh --no-project-pins venv-llama-cpp numpy==2.4.6 ...)  # only these
#
# A named venv keeps a tool whose dependencies could disturb the project's pins apart from them;
# --no-project-pins leaves the pins below out (a venv without torch). The extras go to
# `pip install` as they are, so pip options such as --no-binary=PKG can stand among them (and,
# like the pins, rebuild the venv when they change).
# The first run downloads torch from PyPI (CUDA wheels included, a few GB). A venv is rebuilt when
# its pinned list changes or an earlier install did not finish.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
project_pins=(torch==2.15.0 transformers==5.24.0 safetensors==0.8.0 tokenizers==0.23.3 numpy==2.4.6 gguf==0.19.0 accelerate==1.15.0)
if [ "${1:-}" = --no-project-pins ]; then
  project_pins=()
  shift
  [ $# -ge 2 ] || { echo "scripts/venv.sh: --no-project-pins needs a venv name and its pins" >&2; exit 2; }
fi
venv="$root/.cache/${1:-venv}"
shift || true
reqs=(${project_pins[@]+"${project_pins[@]}"} "$@")
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
echo "$venv/bin/python"
