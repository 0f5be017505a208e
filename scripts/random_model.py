"""A model of a real model's shape with seeded random weights, and transformers' logits for it.

For GPU machines that can reach no package index or hub (scripts/gpu-check.sh there): the shape
and the tokenizer come from a folder holding `config.json` and `tokenizer.json` (a few MB that
travel where the weights cannot), the weights are drawn by transformers' own initialisation with
a fixed seed, so every tensor the engine reads is one transformers also runs.

    python3 scripts/random_model.py make DIR              # writes DIR/model.safetensors
    python3 scripts/random_model.py reference DIR OUT     # transformers' logits, as `logits` writes
    python3 scripts/random_model.py compare REF OURS      # max |Δ| over every position and token

The reference runs on the CPU in float32 with eager attention, so it is exact arithmetic's
stand-in; ours may run on any backend.
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM

# Token ids of the prompt both sides score: a fixed, varied run through the vocabulary.
PROMPT_LEN = 96
SEED = 0


def prompt_ids(vocab_size: int) -> list[int]:
    return [(7919 * i + 13) % vocab_size for i in range(PROMPT_LEN)]


def make(folder: Path) -> None:
    torch.manual_seed(SEED)
    config = AutoConfig.from_pretrained(folder)
    model = AutoModelForCausalLM.from_config(config).float()
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    if getattr(config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    (folder / "ids.json").write_text(json.dumps(prompt_ids(config.vocab_size)))


def reference(folder: Path, out: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").float()
    ids = torch.tensor([json.loads((folder / "ids.json").read_text())])
    with torch.no_grad():
        logits = model(ids).logits[0].float().contiguous()
    save_file({"input_ids": ids[0].to(torch.int64), "logits": logits}, out)


def compare(reference_file: Path, ours_file: Path) -> None:
    ref, ours = load_file(reference_file), load_file(ours_file)
    assert torch.equal(ref["input_ids"], ours["input_ids"]), "the two files score different prompts"
    delta = (ref["logits"] - ours["logits"]).abs().max().item()
    scale = ref["logits"].abs().max().item()
    same_top1 = (ref["logits"].argmax(-1) == ours["logits"].argmax(-1)).float().mean().item()
    print(f"max |Δ logit| {delta:.2e} (max |logit| {scale:.2f}), top-1 agreement {same_top1:.1%}")


if __name__ == "__main__":
    command, *paths = sys.argv[1:]
    {"make": make, "reference": reference, "compare": compare}[command](*map(Path, paths))
