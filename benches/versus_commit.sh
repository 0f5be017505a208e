#!/usr/bin/env bash
# This build against an earlier commit's, on the same machine in one run: the two binaries run the
# same job alternately (so the machine's drift over minutes falls on both), and each run's tokens
# over its whole process's `wall_s` (run.json: tokenizing, reading the store and scoring) are
# averaged. A figure recorded in another session on another day moves with the machine; this
# ratio does not.
#
#   benches/versus_commit.sh REV [PAIRS] [JOB] [airllm-eval options ...]
#   benches/versus_commit.sh fb97b81 4 jobs/suite.yaml --tasks hellaswag   # the performance issue's
#                                                                           # HellaSwag baseline
#
# REV is built in a git worktree (.cache/versus/REV, own target folder) with its own model cache
# (.cache/versus/cache), since store formats may differ between the two; it runs REV's copy of JOB
# (and so its datasets). The first run of each is a warm-up that also splits its store. Output:
# one line per run, then the means, the speed ratio, and how far apart the two builds'
# log-likelihoods (requests.csv: max |delta|) and predictions (docs.csv, the task's own) are.
set -euo pipefail
cd "$(dirname "$0")/.."
rev="${1:?usage: $0 REV [PAIRS] [JOB] [airllm-eval options]}"
pairs="${2:-4}"
job="${3:-jobs/suite.yaml}"
shift $(($# < 3 ? $# : 3))
root="$PWD"
base="$root/.cache/versus"
tree="$base/$(git rev-parse --short "$rev")"
mkdir -p "$base"
[[ -d "$tree" ]] || git worktree add --detach "$tree" "$rev" >/dev/null
cargo build --release -p airllm-eval
(cd "$tree" && CARGO_TARGET_DIR="$base/target" cargo build --release -p airllm-eval)
new=("$root/target/release/airllm-eval" "$root/$job")
old=(env AIRLLM_CACHE="$base/cache" "$base/target/release/airllm-eval" "$tree/$job")
out="$root/.cache/bench/versus"
rm -rf "$out" && mkdir -p "$out"
"${new[@]}" "$@" --out "$out/warmup-new" --no-resume >/dev/null 2>&1
"${old[@]}" "$@" --out "$out/warmup-old" --no-resume >/dev/null 2>&1
for i in $(seq 1 "$pairs"); do
  "${old[@]}" "$@" --out "$out/old-$i" --no-resume >/dev/null 2>&1
  "${new[@]}" "$@" --out "$out/new-$i" --no-resume >/dev/null 2>&1
done
python3 - "$out" "$pairs" "$rev" <<'PY'
import csv, json, sys
out, pairs, rev = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def runs(kind):
    return [json.load(open(f"{out}/{kind}-{i}/run.json")) for i in range(1, pairs + 1)]
mean = {}
for kind in ("old", "new"):
    records = runs(kind)
    for r in records:
        print(f"{kind}: wall {r['wall_s']:.3f} s, {r['tokens'] / r['wall_s']:.1f} tokens/s")
    mean[kind] = sum(r["wall_s"] for r in records) / len(records)
tokens = runs("new")[0]["tokens"]
assert tokens == runs("old")[0]["tokens"], "the two builds scored different token counts"
print(f"{rev}: {mean['old']:.3f} s ({tokens / mean['old']:.1f} tokens/s); this build: "
      f"{mean['new']:.3f} s ({tokens / mean['new']:.1f} tokens/s); {mean['old'] / mean['new']:.3f}x")
def loglik(kind):
    with open(f"{out}/{kind}-1/requests.csv") as f:
        return {(r["task"], r["doc"], r["choice"]): float(r["loglikelihood"]) for r in csv.DictReader(f)}
old, new = loglik("old"), loglik("new")
assert old.keys() == new.keys(), "the two builds scored different requests"
delta = max(abs(old[k] - new[k]) for k in old)
def predictions(kind):
    with open(f"{out}/{kind}-1/docs.csv") as f:
        return {(r["task"], r["doc"]): r["pred"] for r in csv.DictReader(f)}
po, pn = predictions("old"), predictions("new")
assert po.keys() == pn.keys(), "the two builds scored different documents"
differ = sum(po[d] != pn[d] for d in po)
print(f"log-likelihoods: max |delta| {delta:.2e} over {len(old)} requests; "
      f"predictions (docs.csv) differ on {differ} of {len(po)} documents")
PY
