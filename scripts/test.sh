#!/usr/bin/env bash
# The project's test command: fetches the real models the tests use, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-smollm2.sh
scripts/fetch-qwen2.5-coder.sh
# The reference tests run on wgpu too (lavapipe where there is no GPU); AIRLLM_SKIP_WGPU=1 skips it.
if [[ -z "${AIRLLM_SKIP_WGPU:-}" ]]; then
  scripts/ensure-vulkan.sh
  export AIRLLM_REQUIRE_WGPU=1
fi
# The wgpu feature too, so the CLI checks `run --backend wgpu` against the cpu run.
cargo test --workspace --release --features airllm-eval/wgpu "$@"
