"""``dtype: auto`` on CPU: the faster of float32 and bfloat16 autocast, measured on the host.

CPU flags do not predict it. Without AVX512-BF16, bf16 is emulated (several times float32's time);
with AVX512-BF16 but no AMX it can still lose to float32 for some models and shapes while winning
clearly on others (README "Precision"). So the real model is timed at the real
input shape, in both, and bf16 is kept only when clearly faster (``MARGIN``). A decision is cached
per host in a small JSON file keyed by CPU model, torch version, model, input shape and threads, so
each host pays for the measurement (a few seconds) once, not every actor of every run.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable

import torch

log = logging.getLogger("catalog_vision")

CANDIDATES = (torch.float32, torch.bfloat16)
DTYPE_BY_NAME = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# bf16 must beat float32 by this fraction: a tie goes to the exact arithmetic.
MARGIN = 0.10
# Images per timed call: the real batch, but capped at about 1 MiB of uint8 pixels (8 for 224x224
# RGB) so that an emulated-bf16 host spends seconds, not minutes, finding out.
PROBE_BYTES = 2**20
CACHE_FILE = "precision.json"
# Timed calls per candidate (taking turns), and the time after which two rounds are enough.
ROUNDS = 5
BUDGET_S = 2.0
# Part of the cache key: decisions measured another way are measured again.
METHOD = "interleaved-min"
# oneDNN (torch's CPU convolutions and bf16 matmuls) reads either name.
ISA_CAP_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def pick_faster(seconds_of: Callable[[torch.dtype], float], margin: float = MARGIN, rounds: int = ROUNDS,
                budget_s: float = BUDGET_S) -> tuple[torch.dtype, dict[str, float]]:
    """Time each candidate with ``seconds_of(dtype)`` (one timed call, lower is faster); bfloat16
    only when it takes less than float32 by more than ``margin``. Returns the choice and the times
    by dtype name.

    The candidates take turns, round by round (float32 then bfloat16, then the other way round),
    and each keeps its fastest call: other work on the host that comes and goes during the
    measurement then slows both alike instead of whichever ran second, and each gets its quietest
    moment. Stops after ``rounds``, or after two rounds once ``budget_s`` is spent, or after one when
    a candidate takes three times as long (emulated bf16: clear at once, and each call costs seconds)."""
    best: dict[str, float] = {}
    t0 = time.perf_counter()
    for r in range(max(1, rounds)):
        for d in CANDIDATES if r % 2 == 0 else CANDIDATES[::-1]:
            best[dtype_name(d)] = min(best.get(dtype_name(d), float("inf")), float(seconds_of(d)))
        lo, hi = sorted(best.values())
        if hi > 3 * lo or (r >= 1 and time.perf_counter() - t0 > budget_s):
            break
    times = {dtype_name(d): best[dtype_name(d)] for d in CANDIDATES}
    faster = times["bfloat16"] * (1.0 + margin) < times["float32"]
    return (torch.bfloat16 if faster else torch.float32), times


def probe_batch(batch_size: int, shape: tuple[int, ...]) -> int:
    """Images per timed call for inputs of ``shape`` (C, H, W) and a real batch of ``batch_size``."""
    per_image = max(1, int(torch.tensor(shape).prod()))
    return max(1, min(int(batch_size), max(4, PROBE_BYTES // per_image)))


def _autocast(dtype: torch.dtype):
    return contextlib.nullcontext() if dtype == torch.float32 else torch.autocast("cpu", dtype=dtype)


class _Clock:
    """One timed call of ``step`` per use; the first use per dtype runs ``warmup`` untimed calls
    before it (oneDNN builds its kernels on the first call of each dtype and shape).

    A candidate whose warm-up already takes three times the first candidate's is clearly slower (emulated
    bf16: 7x): its warm-up time stands as its figure, sparing seconds of timed calls."""

    def __init__(self, warmup: int):
        self.warmup = max(1, warmup)
        self.warm: dict[torch.dtype, float] = {}

    def __call__(self, dtype: torch.dtype, step: Callable[[], Any]) -> float:
        if dtype not in self.warm:
            t = time.perf_counter()
            for _ in range(self.warmup):
                step()
            self.warm[dtype] = (time.perf_counter() - t) / self.warmup
            first = next(iter(self.warm.values()))
            if self.warm[dtype] > 3 * first:
                return self.warm[dtype]
        t = time.perf_counter()
        step()
        return time.perf_counter() - t


def _pixels(n: int, shape: tuple[int, ...], channels_last: bool) -> torch.Tensor:
    # Its own generator: measuring must not move the caller's random stream (training seeds weights).
    x = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def inference_timer(model: torch.nn.Module, n: int, shape: tuple[int, ...], channels_last: bool = True,
                    warmup: int = 1) -> Callable[[torch.dtype], float]:
    """``seconds_of(dtype)`` for :func:`pick_faster`: the model's forward (features + head, as the
    predictor calls it) on ``n`` images of ``shape``, per image."""
    x = _pixels(n, shape, channels_last)
    clock = _Clock(warmup)

    @torch.inference_mode()
    def seconds_of(dtype: torch.dtype) -> float:
        def step():
            with _autocast(dtype):
                model.forward_head(model.forward_features(x)).float()

        return clock(dtype, step) / n

    return seconds_of


def training_timer(model: torch.nn.Module, n: int, shape: tuple[int, ...], channels_last: bool = True,
                   warmup: int = 1) -> Callable[[torch.dtype], float]:
    """``seconds_of(dtype)`` for :func:`pick_faster`: forward + backward of a copy of ``model`` (the
    real one keeps its gradients and batch-norm statistics untouched), per image."""
    probe = copy.deepcopy(model).train()
    x = _pixels(n, shape, channels_last)
    clock = _Clock(warmup)

    def seconds_of(dtype: torch.dtype) -> float:
        def step():
            with _autocast(dtype):
                out = probe(x)
            out.float().square().mean().backward()
            probe.zero_grad(set_to_none=True)

        # Dropout draws from the global generator: measuring must not move the run's seeded stream.
        with torch.random.fork_rng(devices=[]):
            return clock(dtype, step) / n

    return seconds_of


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def default_cache_dir() -> Path:
    return Path(os.environ.get("CATALOG_VISION_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "catalog-vision")


def host_key(purpose: str, model_key: str, shape: tuple[int, ...], n: int, **more: Any) -> dict:
    """What a measured decision depends on: the host's CPU and core count, torch, the model, the
    input, torch's thread count, the measuring method, a cap on oneDNN's instruction sets when one
    is set (``ONEDNN_MAX_CPU_ISA``, e.g. ``AVX512_CORE_BF16``: bfloat16 without AMX), and ``more``."""
    isa_cap = {k: os.environ[k] for k in ISA_CAP_VARIABLES if os.environ.get(k)}
    return {
        "purpose": purpose,
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "model": model_key,
        "input": [n, *shape],
        "threads": torch.get_num_threads(),
        "method": METHOD,
        **({"isa_cap": isa_cap} if isa_cap else {}),
        **more,
    }


def cached_decision(key: dict, measure: Callable[[], dict], cache_dir: str | os.PathLike | None = None) -> dict:
    """The entry cached under ``key`` on this host, or ``measure()``'s (then cached, with ``key``).
    Returns the entry plus ``cached``. A cache that cannot be read or written only costs a measurement."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir) if cache_dir else default_cache_dir()
    cache = path / CACHE_FILE
    try:
        entry = json.loads(cache.read_text()).get(digest)
    except (OSError, ValueError, AttributeError):
        entry = None
    if entry:
        return {**entry, "cached": True}
    entry = {**measure(), "key": key}
    try:
        path.mkdir(parents=True, exist_ok=True)
        try:
            data = json.loads(cache.read_text())
        except (OSError, ValueError):
            data = {}
        data[digest] = entry
        tmp = cache.with_name(f".{CACHE_FILE}.{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, cache)  # atomic: actors on one host may write at the same time
    except OSError as e:
        log.warning("measurement cache %s not written (%s): the next start measures again", cache, e)
    return {**entry, "cached": False}


def measured_dtype(purpose: str, model_key: str, shape: tuple[int, ...], n: int, seconds_of: Callable[[torch.dtype], float],
                   cache_dir: str | os.PathLike | None = None) -> dict:
    """The cached decision for this host, model and input, or a new measurement (then cached).

    Returns ``{"dtype", "seconds_per_image": {dtype: s}, "why", "key", "cached"}``; ``purpose`` is
    ``inference`` or ``training``.
    """
    key = host_key(purpose, model_key, shape, n)

    def measure() -> dict:
        t = time.perf_counter()
        chosen, times = pick_faster(seconds_of)
        name = dtype_name(chosen)
        why = (
            f"{purpose} of {n}x{'x'.join(map(str, shape))} on {key['threads']} thread(s): "
            + ", ".join(f"{d} {1000 * s:.2f} ms/image" for d, s in times.items())
            + f"; bfloat16 is kept only when >{MARGIN:.0%} faster (measured in {time.perf_counter() - t:.1f}s)"
        )
        log.info("precision auto -> %s (%s)", name, why)
        return {"dtype": name, "seconds_per_image": times, "why": why}

    return cached_decision(key, measure, cache_dir)
