"""``dtype: auto`` / ``precision: auto`` on CPU: chosen by timing the real model on this host, cached
per host, recorded where users look (the predictor, ``_run.json``, the training log)."""

import json

import pytest
import torch

from catalog_vision.infer import precision
from catalog_vision.infer.predictor import Predictor
from catalog_vision.infer.device import resolve_dtype
from catalog_vision.train.recipe import train_precision
from conftest import make_cfg


def timings(float32: float, bfloat16: float):
    calls = []

    def seconds_of(dtype):
        calls.append(dtype)
        return {torch.float32: float32, torch.bfloat16: bfloat16}[dtype]

    return seconds_of, calls


@pytest.mark.parametrize(
    "f32, bf16, expected",
    [
        (1.0, 0.4, torch.bfloat16),  # native bf16: much faster
        (1.0, 7.0, torch.float32),  # emulated bf16: much slower
        (1.0, 0.95, torch.float32),  # within the margin: exact arithmetic wins the tie
        (1.0, 1.0 / (1 + precision.MARGIN) - 0.01, torch.bfloat16),  # just past the margin
    ],
)
def test_pick_faster_keeps_bfloat16_only_when_clearly_faster(f32, bf16, expected):
    seconds_of, calls = timings(f32, bf16)
    chosen, times = precision.pick_faster(seconds_of)
    assert chosen == expected
    assert times == {"float32": f32, "bfloat16": bf16}
    f, b = torch.float32, torch.bfloat16
    if bf16 > 3 * f32:  # clear after one round: emulated bf16 costs seconds per call
        assert calls == [f, b]
    else:  # the candidates take turns, each round in the other order
        assert calls == [f, b, b, f, f, b, b, f, f, b][: 2 * precision.ROUNDS]


def test_pick_faster_is_not_fooled_by_load_that_arrives_mid_measurement():
    """bfloat16 is 25% faster, but from the third call on another process halves this one's speed.
    Timing one candidate after the other (float32's calls first) would see bfloat16 only under load
    and keep float32; taking turns, each keeps its quiet figure."""
    calls = []

    def seconds_of(dtype):
        calls.append(dtype)
        base = {torch.float32: 1.0, torch.bfloat16: 0.75}[dtype]
        return base * (2.0 if len(calls) > 2 else 1.0)

    chosen, times = precision.pick_faster(seconds_of)
    assert chosen == torch.bfloat16 and times == {"float32": 1.0, "bfloat16": 0.75}
    # The same timings, taken one candidate after the other, would have chosen wrongly:
    calls.clear()
    sequential = {d: min(seconds_of(d) for _ in range(3)) for d in (torch.float32, torch.bfloat16)}
    assert sequential[torch.bfloat16] * (1 + precision.MARGIN) > sequential[torch.float32]


def test_measured_dtype_is_cached_per_key(tmp_path):
    seconds_of, calls = timings(1.0, 0.3)
    first = precision.measured_dtype("inference", "model-a", (3, 32, 32), 8, seconds_of, tmp_path)
    assert (first["dtype"], first["cached"]) == ("bfloat16", False)
    assert "float32 1000.00 ms/image" in first["why"] and "bfloat16 300.00 ms/image" in first["why"]
    # Same host, model and input: no second measurement, even if timings would now differ.
    slower, calls_again = timings(1.0, 5.0)
    again = precision.measured_dtype("inference", "model-a", (3, 32, 32), 8, slower, tmp_path)
    assert (again["dtype"], again["cached"], calls_again) == ("bfloat16", True, [])
    # Another input shape is another decision.
    other = precision.measured_dtype("inference", "model-a", (3, 64, 64), 8, slower, tmp_path)
    assert (other["dtype"], other["cached"]) == ("float32", False)
    assert len(json.loads((tmp_path / precision.CACHE_FILE).read_text())) == 2


def test_a_cap_on_onednns_instruction_sets_is_another_decision(tmp_path, monkeypatch):
    """ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 turns AMX off: bfloat16 then runs on AVX-512 alone (slower
    than float32 for ResNets on this kind of host), so a choice measured without the cap is not reused."""
    for name in precision.ISA_CAP_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    fast_bf16, _ = timings(1.0, 0.3)
    assert precision.measured_dtype("inference", "m", (3, 32, 32), 8, fast_bf16, tmp_path)["dtype"] == "bfloat16"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    slow_bf16, calls = timings(1.0, 1.4)
    capped = precision.measured_dtype("inference", "m", (3, 32, 32), 8, slow_bf16, tmp_path)
    assert (capped["dtype"], capped["cached"]) == ("float32", False) and set(calls) == {torch.float32, torch.bfloat16}
    assert capped["key"]["isa_cap"] == {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}


def test_unreadable_cache_costs_a_measurement_not_a_failure(tmp_path):
    (tmp_path / precision.CACHE_FILE).write_text("{not json")
    seconds_of, calls = timings(1.0, 2.0)
    got = precision.measured_dtype("training", "m", (1, 8, 8), 4, seconds_of, tmp_path)
    assert got["dtype"] == "float32" and set(calls) == {torch.float32, torch.bfloat16}
    assert json.loads((tmp_path / precision.CACHE_FILE).read_text())  # rewritten whole


def test_resolve_dtype_measures_only_auto_on_cpu():
    asked = []
    measure = lambda: asked.append(1) or torch.bfloat16  # noqa: E731
    assert resolve_dtype("auto", torch.device("cpu"), measure=measure) == torch.bfloat16 and asked == [1]
    assert resolve_dtype("float32", torch.device("cpu"), measure=measure) == torch.float32 and asked == [1]
    with pytest.raises(ValueError, match="auto.*bfloat16.*float16.*float32"):
        resolve_dtype("int8", torch.device("cpu"))


def test_predictor_auto_times_the_real_model_and_reports_its_choice(random_checkpoint, tmp_path):
    p = Predictor(random_checkpoint, device="cpu", dtype="auto", batch_size=64, dtype_cache_dir=str(tmp_path / "cache"), report_to=str(tmp_path / "reports"))
    choice = p.dtype_choice
    assert choice["cached"] is False
    assert p.dtype == precision.DTYPE_BY_NAME[choice["dtype"]]
    assert set(choice["seconds_per_image"]) == {"float32", "bfloat16"} and min(choice["seconds_per_image"].values()) > 0
    # The choice follows the figures it reports.
    f32, bf16 = choice["seconds_per_image"]["float32"], choice["seconds_per_image"]["bfloat16"]
    assert choice["dtype"] == ("bfloat16" if bf16 * (1 + precision.MARGIN) < f32 else "float32")
    assert choice["key"]["input"] == [64, 1, 28, 28] and choice["key"]["threads"] == torch.get_num_threads()
    [report] = [json.loads(f.read_text()) for f in (tmp_path / "reports").iterdir() if not f.name.startswith("actor-")]
    assert report["dtype"] == choice["dtype"] and report["auto"]["seconds_per_image"] == choice["seconds_per_image"]
    # A second actor on this host reuses the decision.
    again = Predictor(random_checkpoint, device="cpu", dtype="auto", batch_size=64, dtype_cache_dir=str(tmp_path / "cache"))
    assert again.dtype == p.dtype and again.dtype_choice["cached"] is True
    # An explicit dtype is not measured.
    assert Predictor(random_checkpoint, device="cpu", dtype="float32", dtype_cache_dir=str(tmp_path / "cache")).dtype_choice is None


def test_training_auto_times_forward_and_backward_without_touching_the_model(tmp_path):
    from catalog_vision.models import build_model

    cfg = make_cfg("experiment=smoke")
    t = {**cfg["trainer"], "precision_cache_dir": str(tmp_path)}
    model = build_model(cfg["model"], 10, cfg["data"]["preprocessing"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    dtype, choice = train_precision(t, model, cfg["model"], cfg["data"]["preprocessing"], torch.device("cpu"), rank=0)
    assert dtype == precision.DTYPE_BY_NAME[choice["dtype"]] and choice["key"]["purpose"] == "training"
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # incl. batch-norm statistics
    assert torch.equal(rng, torch.get_rng_state())  # the seeded weight init / augmentation stream is untouched
    fixed, none = train_precision({**t, "precision": "float32"}, model, cfg["model"], cfg["data"]["preprocessing"], torch.device("cpu"), rank=0)
    assert (fixed, none) == (torch.float32, None)
