#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU (never a CI requirement): builds with
# `--features cuda`, runs every reference test on cuda (`on_every_backend!`'s cuda target: tiny
# models of each family, SmolLM2 against transformers, MMLU against lm-eval), then the default job
# (jobs/mmlu.yaml) on the cpu and on cuda, and `bench` on cuda, and prints one table.
#
#   scripts/gpu-check.sh [cuda|wgpu]          # default cuda; wgpu checks the same on its adapter
#   LIMIT=5 scripts/gpu-check.sh wgpu         # --limit for the job and bench (slow devices)
#   SKIP_TESTS=1 scripts/gpu-check.sh         # the job and bench only (the tests row says skipped)
#
# Everything goes to .cache/gpu-check/BACKEND/: tests.log, mmlu-cpu/ and mmlu-BACKEND/ (the runs'
# output folders), bench.json, gpu-memory.csv (nvidia-smi's memory.used every 200 ms, when there
# is nvidia-smi). The table (also table.md there) has these rows:
#   device                          GPU name and driver (nvidia-smi), or the wgpu adapter's
#   reference tests on BACKEND      passed / failed, as cargo test counts them
#   default job, predictions        documents whose prediction equals the cpu run's, max |Δ loglik|
#   default job on BACKEND / cpu    tokens/s and accuracy of each run
#   bench MODE on BACKEND           tokens/s, one row per mode (resident, per-prompt, layer-major)
#   host->device per layer          MiB of layer weights handed to the device per layer load
#   peak GPU memory                 MiB, the largest memory.used seen during the job and bench
set -euo pipefail
cd "$(dirname "$0")/.."
backend="${1:-cuda}"
case "$backend" in cuda | wgpu) ;; *) echo "usage: $0 [cuda|wgpu]" >&2; exit 2 ;; esac
out=".cache/gpu-check/$backend"
rm -rf "$out" && mkdir -p "$out"
limit=()
[[ -n "${LIMIT:-}" ]] && limit=(--limit "$LIMIT")
scripts/fetch-smollm2.sh >/dev/null
cargo build --release -p airllm-eval --features "$backend"
bin=target/release/airllm-eval

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
  for package in airllm-engine airllm-eval; do
    cargo test --release -p "$package" --features "$package/$backend" --test '*' -- "::$backend" --nocapture \
      >> "$out/tests.log" 2>&1 || true # failures are counted in the table
  done
fi
grep -E '^test result' "$out/tests.log" || true

"$bin" run jobs/mmlu.yaml "${limit[@]}" --no-resume --out "$out/mmlu-cpu"
"$bin" run jobs/mmlu.yaml "${limit[@]}" --no-resume --backend "$backend" --out "$out/mmlu-$backend"
"$bin" bench jobs/mmlu.yaml "${limit[@]}" --per-prompt-limit 5 --backend "$backend" --json "$out/bench.json"

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
    rows.append((f"bench {mode['mode']} on {backend}", f"{mode['tokens_per_s']:.1f} tokens/s"))
per_layer = max(m.get("device_bytes_per_layer", 0) for m in bench["modes"])
rows.append(("host->device per layer", f"{per_layer / 2**20:.1f} MiB"))
memory = out / "gpu-memory.csv"
if memory.exists():
    used = [int(v) for v in memory.read_text().split() if v.strip().isdigit()]
    rows.append(("peak GPU memory", f"{max(used)} MiB" if used else "(no samples)"))
table = "| check | result |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)
(out / "table.md").write_text(table)
print(table)
PY
