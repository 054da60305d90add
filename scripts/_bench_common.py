"""Helpers shared by scripts/bench_ppo.py and scripts/bench_memory.py (not importable as mmft).

Every measurement runs in its own child process (`run_child`), so one system's
allocations never show in another's peak: on the CPU the figure is the child's
`getrusage(RUSAGE_SELF).ru_maxrss`, on a GPU `torch.cuda.max_memory_allocated`.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def peak_rss_mib() -> float:
    """Peak resident set size of this process in MiB (Linux reports ru_maxrss in KiB)."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024 if sys.platform != "darwin" else kib / 2**20


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("TRANSFORMERS_VERBOSITY", "error")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def run_child(script: str | Path, spec: dict, timeout: float = 1800, in_process: dict | None = None) -> dict:
    """Run `python SCRIPT --child JSON --child-out FILE` and return the dict it wrote.

    The child must write its result to FILE; a failure raises with the child's stderr tail.
    `in_process` ({task: function}) runs the task in this process instead (smoke tests:
    no isolation, so memory figures are this process's running peak)."""
    if in_process is not None:
        t0 = time.time()
        result = json.loads(json.dumps(in_process[spec["task"]](spec)))
        result["child_wall_s"] = time.time() - t0
        return result
    with tempfile.TemporaryDirectory(prefix="mmft-bench-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, str(script), "--child", json.dumps(spec), "--child-out", str(out)]
        t0 = time.time()
        proc = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=timeout, cwd=str(REPO))
        if proc.returncode != 0 or not out.exists():
            tail = (proc.stderr or "")[-4000:]
            raise RuntimeError(f"benchmark child {spec} failed (exit {proc.returncode}):\n{tail}")
        result = json.loads(out.read_text())
        result["child_wall_s"] = time.time() - t0
        return result


def write_child_result(path: str, result: dict) -> None:
    Path(path).write_text(json.dumps(result, indent=1))


def machine_description() -> dict:
    """CPU model, cores, RAM, GPU (if any) and library versions, for BENCHMARKS.md."""
    import accelerate
    import peft
    import torch
    import transformers

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    info = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu,
        "cpu_cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "ram_gib": mem_gib,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "accelerate": accelerate.__version__,
    }
    try:
        import trl

        info["trl"] = trl.__version__
    except ImportError:
        info["trl"] = None
    return info


def median(xs: list[float]) -> float:
    xs = sorted(x for x in xs if x is not None and not math.isnan(x))
    if not xs:
        return float("nan")
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def table(headers: list[str], rows: list[list], floatfmt: str = "{:.3g}") -> str:
    """A GitHub-markdown table (also readable on a terminal)."""
    def fmt(v):
        if isinstance(v, float):
            return "n/a" if math.isnan(v) else floatfmt.format(v)
        return "" if v is None else str(v)

    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    out = [line(headers), "| " + " | ".join("-" * w for w in widths) + " |"]
    out += [line(r) for r in cells]
    return "\n".join(out)


def finite(obj) -> bool:
    """True if every number in a nested dict/list is finite (None allowed)."""
    if isinstance(obj, dict):
        return all(finite(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return all(finite(v) for v in obj)
    if isinstance(obj, float):
        return math.isfinite(obj)
    return True


def save_result(json_path: str | Path, result: dict, script: str, argv: list[str] | None) -> dict:
    """Add the machine and the command line (`argv`: main's, None for sys.argv) to `result`
    and write it to `json_path` as JSON; returns it."""
    result["machine"] = machine_description()
    result["command"] = " ".join(["python", f"scripts/{script}", *(sys.argv[1:] if argv is None else argv)])
    Path(json_path).parent.mkdir(parents=True, exist_ok=True)
    Path(json_path).write_text(json.dumps(result, indent=1))
    return result
