"""Where and in what precision a model runs: ``predictor.device`` and ``predictor.dtype`` (also
``trainer.precision``), their choices and how ``auto`` resolves on this process's hardware."""

from __future__ import annotations

from typing import Callable

import torch

DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str) -> torch.device:
    if device not in DEVICES:
        raise ValueError(f"predictor.device={device!r}; choose one of {list(DEVICES)}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("predictor.device=cuda but no CUDA device is visible to this actor; set predictor=cpu or predictor.device=auto")
    return torch.device(device)


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX present: reported in benchmarks; ``dtype: auto`` measures instead (see :mod:`.precision`)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
                    and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()))
    except (AttributeError, RuntimeError):
        return False


def check_dtype(dtype: str, setting: str = "predictor.dtype") -> None:
    if dtype not in DTYPES:
        raise ValueError(f"{setting}={dtype!r}; choose one of {sorted(DTYPES)}")


def resolve_dtype(dtype: str, device: torch.device, setting: str = "predictor.dtype", measure: Callable[[], torch.dtype] | None = None) -> torch.dtype:
    """``auto``: on CUDA bfloat16 where supported, else float16; on CPU ``measure()`` (the faster of
    float32 and bfloat16 on this host, :mod:`.precision`), or float32 when nothing can be measured."""
    check_dtype(dtype, setting)
    if dtype != "auto":
        return DTYPES[dtype]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return measure() if measure is not None else torch.float32
