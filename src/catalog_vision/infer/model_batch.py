"""``predictor.model_batch: auto`` on CPU: how many images go through the model per call, measured.

The batch Ray Data hands an actor (``predictor.batch_size``) sets how work is cut up and shipped;
it need not be the batch the model runs fastest at. On CPUs the time per image can grow with the
batch once a layer's activations no longer fit in the caches, by a factor that depends on the
model, the input size, the dtype and the host. So, as with ``dtype: auto`` (:mod:`.precision`), the
real model is timed at the real input shape for the batch and its halves (down to ``FLOOR``
images), the candidates taking turns, and a smaller call is kept only when clearly faster per image.
The decision is cached per host like the dtype's.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Callable

import torch

from . import precision

log = logging.getLogger("catalog_vision")

FLOOR = 32  # the smallest model call tried
ROUNDS = 3
BUDGET_S = 3.0  # after two rounds, stop once this is spent


def candidates(batch_size: int, floor: int = FLOOR) -> list[int]:
    """``batch_size`` and its halves down to ``floor`` (largest first)."""
    sizes, n = [], int(batch_size)
    while n >= floor or not sizes:
        sizes.append(n)
        n //= 2
    return sizes


def pick_batch(seconds_of: Callable[[int], float], sizes: list[int], margin: float = precision.MARGIN, rounds: int = ROUNDS,
               budget_s: float = BUDGET_S) -> tuple[int, dict[int, float]]:
    """``seconds_of(n)``: seconds per image of one model call on ``n`` images. Candidates take turns
    (the order reversed every round) and keep their fastest call; the first size (the whole batch)
    stays unless another is faster per image by more than ``margin``."""
    best: dict[int, float] = {}
    t0 = time.perf_counter()
    for r in range(max(1, rounds)):
        for n in sizes if r % 2 == 0 else sizes[::-1]:
            best[n] = min(best.get(n, float("inf")), float(seconds_of(n)))
        if r >= 1 and time.perf_counter() - t0 > budget_s:
            break
    fastest = min(sizes, key=lambda n: best[n])
    chosen = fastest if best[fastest] * (1.0 + margin) < best[sizes[0]] else sizes[0]
    return chosen, {n: best[n] for n in sizes}


def inference_timer(model: torch.nn.Module, shape: tuple[int, ...], dtype: torch.dtype, channels_last: bool = True) -> Callable[[int], float]:
    """``seconds_of(n)`` for :func:`pick_batch`: the predictor's forward (features + head) in ``dtype``
    on ``n`` images of ``shape``, per image; the first call of each size is a warm-up."""
    warm: set[int] = set()

    @torch.inference_mode()
    def seconds_of(n: int) -> float:
        x = precision._pixels(n, shape, channels_last)

        def step():
            with precision._autocast(dtype):
                model.forward_head(model.forward_features(x)).float()

        if n not in warm:
            step()
            warm.add(n)
        t = time.perf_counter()
        step()
        return (time.perf_counter() - t) / n

    return seconds_of


def measured_model_batch(model_key: str, shape: tuple[int, ...], batch_size: int, dtype: torch.dtype, seconds_of: Callable[[int], float],
                         cache_dir: str | os.PathLike | None = None) -> dict:
    """The cached decision for this host, model, input, batch and dtype, or a new measurement.

    Returns ``{"model_batch", "seconds_per_image": {size: s}, "why", "key", "cached"}``."""
    key = precision.host_key("model-batch", model_key, shape, int(batch_size), dtype=precision.dtype_name(dtype))
    sizes = candidates(batch_size)

    def measure() -> dict:
        t = time.perf_counter()
        chosen, times = pick_batch(seconds_of, sizes)
        why = (
            f"model calls within batches of {batch_size}x{'x'.join(map(str, shape))} in {precision.dtype_name(dtype)} on "
            f"{key['threads']} thread(s): " + ", ".join(f"{n} images {1000 * s:.3f} ms/image" for n, s in times.items())
            + f"; a smaller call is kept only when >{precision.MARGIN:.0%} faster (measured in {time.perf_counter() - t:.1f}s)"
        )
        log.info("model_batch auto -> %d (%s)", chosen, why)
        return {"model_batch": chosen, "seconds_per_image": {str(n): s for n, s in times.items()}, "why": why}

    return precision.cached_decision(key, measure, cache_dir) if len(sizes) > 1 else {"model_batch": sizes[0], "why": "one candidate", "cached": False}
