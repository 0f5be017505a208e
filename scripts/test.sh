#!/usr/bin/env bash
# The project's test command: fetches the real models the tests use, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-smollm2.sh
scripts/fetch-qwen2.5-coder.sh
cargo test --workspace --release "$@"
