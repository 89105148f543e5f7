"""Result files: what a benchmark or the demo measured, with where and when, so the README's tables
are generated from them (``python bench/readme.py``) and cannot drift from what was run.

Each file ``bench/results/<name>.json`` holds the command, the commit (``-dirty`` when the tree had
uncommitted changes), the date, the host, the load average, and a table of already formatted cells.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


def commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty.strip() else "")


def host() -> str:
    """CPU model, cores, memory, native bf16 units, Python and (when imported) torch."""
    flags, model = set(), platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    parts = [model, f"{os.cpu_count()} cores", f"{mem:.0f} GiB", "avx512_bf16" if "avx512_bf16" in flags else "no avx512_bf16",
             "AMX" if "amx_bf16" in flags else "no AMX", f"Python {platform.python_version()}"]
    if "torch" in sys.modules:
        parts.append(f"torch {sys.modules['torch'].__version__}")
    cap = isa_cap()
    if cap:
        parts.append(f"oneDNN capped at {cap} (ONEDNN_MAX_CPU_ISA)" + (": no AMX" if cap.upper().startswith("AVX") else ""))
    return ", ".join(parts)


def isa_cap() -> str | None:
    """The instruction-set cap a run set for oneDNN (torch's CPU convolutions and bf16 matmuls):
    ``AVX512_CORE_BF16`` on an AMX host runs bfloat16 as a host without AMX would."""
    return os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or None


def env_prefix() -> str:
    """``ONEDNN_MAX_CPU_ISA=... `` when a cap is set: part of the command that reproduces a run."""
    cap = isa_cap()
    return f"ONEDNN_MAX_CPU_ISA={cap} " if cap else ""


def suffix() -> str:
    """A result file name's suffix for a capped run, so it does not replace the uncapped one."""
    cap = isa_cap()
    return f"-{cap.lower()}" if cap else ""


def save(name: str, command: str, columns: Sequence[str], rows: Sequence[Sequence[object]], notes: Sequence[str] = (),
         align: str | None = None, folder: Path | None = None) -> Path:
    """Write ``<folder>/<name>.json`` (default ``bench/results``); cells are stored as the strings the table shows."""
    if any(len(r) != len(columns) for r in rows):
        raise ValueError(f"{name}: every row needs {len(columns)} cells")
    record = {
        "name": name,
        "command": command,
        "commit": commit(),
        "date": datetime.date.today().isoformat(),
        "host": host(),
        "load": round(os.getloadavg()[0], 2),
        "columns": list(columns),
        "align": align or "l" + "r" * (len(columns) - 1),
        "rows": [[str(c) for c in r] for r in rows],
        "notes": list(notes),
    }
    path = (folder or RESULTS) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"results: {path.relative_to(REPO) if path.is_relative_to(REPO) else path}", flush=True)
    return path
