#!/usr/bin/env bash
# The suite as one job against the same tasks run one job each, in one run: wall time, store bytes
# read, tokens and peak memory, from each run's run.json.
#
#   benches/suite_vs_tasks.sh [JOB.yaml]        # default jobs/suite.yaml; results in .cache/bench/suite
#
# Every run starts fresh (--no-resume). The model store is already split (the first run splits it),
# so the times are scoring times plus each process's start (tokenizing, opening the store).
set -euo pipefail
cd "$(dirname "$0")/.."
job="${1:-jobs/suite.yaml}"
out=.cache/bench/suite
rm -rf "$out" && mkdir -p "$out"
cargo build --release -p airllm-eval
bin=target/release/airllm-eval
"$bin" "$job" --out "$out/warmup" --tasks wikitext --limit 1 >/dev/null 2>&1 # fetch and split once
rm -rf "$out/warmup"
tasks=$(python3 - "$job" <<'PY'
import re, sys
names = re.findall(r"^\s*-\s*name:\s*(\S+)", open(sys.argv[1]).read(), re.M)
print(" ".join(names))
PY
)
echo "suite: $tasks" >&2
"$bin" "$job" --out "$out/suite" --no-resume >/dev/null
for task in $tasks; do
  "$bin" "$job" --tasks "$task" --out "$out/$task" --no-resume >/dev/null
done
python3 - "$out" $tasks <<'PY'
import json, sys
out, tasks = sys.argv[1], sys.argv[2:]
def record(name):
    return json.load(open(f"{out}/{name}/run.json"))
def row(label, runs):
    wall = sum(r["wall_s"] for r in runs)
    read = sum(r["store_bytes_read"] for r in runs)
    tokens = sum(r["tokens"] for r in runs)
    rss = max(r["peak_rss_bytes"] for r in runs)
    waves = sum(r["waves_run"] for r in runs)
    print(f"| {label} | {len(runs)} | {tokens} | {waves} | {wall:.1f} | {tokens / wall:.0f} | {read / 2**20:.0f} | {rss / 2**20:.0f} |")
print("| run | processes | tokens | waves | wall s | tokens/s | store MiB read | peak RSS MiB |")
print("|---|---|---|---|---|---|---|---|")
row("suite, one job", [record("suite")])
for t in tasks:
    row(f"{t} alone", [record(t)])
row("tasks one job each, total", [record(t) for t in tasks])
PY
