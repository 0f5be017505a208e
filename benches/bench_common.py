"""What the Python baselines (hf_transformers.py, airllm_bench.py, llama_cpp_bench.py) share:
reading the requests file that `airllm-eval bench --requests-out` writes, and describing the machine
and package versions, and writing the results file."""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path


def load_requests(path: Path, limit: int | None = None) -> list[dict]:
    """Reads and checks the first `limit` (default: all) requests: each has non-empty tokens and
    in-range scored positions. Each keeps its line number as `line`, for error messages."""
    if not path.is_file():
        raise SystemExit(f"{path}: not found (make it with `target/release/airllm-eval bench "
                         f"jobs/mmlu.yaml --requests-out {path}`)")
    requests = []
    with path.open() as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            if limit is not None and len(requests) >= limit:
                break
            r = json.loads(line)
            tokens, positions = r.get("tokens"), r.get("positions")
            if not tokens or not positions:
                raise SystemExit(f"{path}:{line_no}: needs non-empty 'tokens' and 'positions'")
            if any(not 0 <= p < len(tokens) for p in positions):
                raise SystemExit(f"{path}:{line_no}: a position is outside 0..{len(tokens) - 1}")
            targets = r.get("targets", [])
            if any(len(t) != 2 or t[0] not in positions for t in targets):
                raise SystemExit(f"{path}:{line_no}: each target must be [position, token] at a scored position")
            requests.append({"tokens": tokens, "positions": positions, "targets": targets, "line": line_no})
    if not requests:
        raise SystemExit(f"{path}: no requests")
    return requests


def target_scores(request: dict, rows) -> list[list]:
    """`[log-prob, is the row's argmax]` of each of the request's targets (`[position, token]`, from
    the requests file), `rows` its log-probability rows in `positions` order (numpy or torch). From
    these `airllm-eval bench --scores-from` computes the task's metric, as for our own rows."""
    at = {p: i for i, p in enumerate(request["positions"])}
    best = {}  # each row's argmax, taken once however many targets share the row (MMLU: four)
    out = []
    for position, token in request["targets"]:
        i = at[position]
        if i not in best:
            best[i] = int(rows[i].argmax())
        out.append([float(rows[i][token]), best[i] == token])
    return out


def check_vocab(requests: list[dict], vocab: int, path: Path) -> None:
    """Exits naming the first request line with a token id outside the model's vocabulary."""
    bad = [r["line"] for r in requests if max(r["tokens"]) >= vocab or min(r["tokens"]) < 0]
    if bad:
        raise SystemExit(f"{path}:{bad[0]}: a token id is outside 0..{vocab - 1}")


def versions(packages: tuple[str, ...]) -> dict:
    """Python's version and each package's (None when it is not installed)."""
    out = {"python": platform.python_version()}
    for pkg in packages:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_json(path: Path, record: dict) -> None:
    """Writes a baseline's results file (creating its folder) and says where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")
