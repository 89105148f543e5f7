"""``predictor.model_batch``: images per model call within an actor's batch, a number or measured
on the host (``auto``), cached like ``dtype: auto``; chunked calls give the whole batch's answers."""

import json

import numpy as np
import pytest

from catalog_vision.infer import model_batch, precision
from catalog_vision.infer.predictor import Predictor


def test_candidates_are_the_batch_and_its_halves_down_to_the_floor():
    assert model_batch.candidates(512) == [512, 256, 128, 64, 32]
    assert model_batch.candidates(100) == [100, 50]
    assert model_batch.candidates(20) == [20]  # below the floor: the batch itself


@pytest.mark.parametrize(
    "per_image, expected",
    [
        ({64: 1.0, 32: 0.5}, 32),  # half the batch is twice as fast per image
        ({64: 1.0, 32: 0.95}, 64),  # within the margin: the whole batch (fewer, larger calls)
        ({64: 0.6, 32: 1.0}, 64),
        ({128: 1.0, 64: 0.7, 32: 0.8}, 64),  # the fastest, not merely the smallest
    ],
)
def test_pick_batch_keeps_a_smaller_call_only_when_clearly_faster(per_image, expected):
    calls = []

    def seconds_of(n):
        calls.append(n)
        return per_image[n]

    sizes = sorted(per_image, reverse=True)
    chosen, times = model_batch.pick_batch(seconds_of, sizes, rounds=2)
    assert chosen == expected and times == per_image
    assert calls == sizes + sizes[::-1]  # taking turns, each round in the other order


def test_pick_batch_is_not_fooled_by_load_that_arrives_mid_measurement():
    calls = []

    def seconds_of(n):
        calls.append(n)
        return {64: 1.0, 32: 0.6}[n] * (3.0 if len(calls) > 2 else 1.0)

    chosen, times = model_batch.pick_batch(seconds_of, [64, 32], rounds=3)
    assert chosen == 32 and times == {64: 1.0, 32: 0.6}


def test_chunked_model_calls_give_the_whole_batch_answers(random_checkpoint):
    x = np.random.default_rng(0).integers(0, 256, (50, 1, 28, 28), dtype=np.uint8)
    whole = Predictor(random_checkpoint, device="cpu", dtype="float32")
    chunked = Predictor(random_checkpoint, device="cpu", dtype="float32", model_batch=16)
    assert (whole.model_batch, chunked.model_batch) == (None, 16)
    (p1, e1), (p2, e2) = whole.predict_pixels(x), chunked.predict_pixels(x)
    assert p2.shape == p1.shape == (50, 10) and e2.shape == e1.shape
    np.testing.assert_allclose(p2, p1, rtol=0, atol=1e-5)
    np.testing.assert_allclose(e2, e1, rtol=0, atol=1e-5)
    # Each chunk really is a separate model call of at most 16 images.
    calls = []
    inner = chunked.model.forward_features
    chunked.model.forward_features = lambda t: calls.append(len(t)) or inner(t)
    chunked.predict_pixels(x)
    assert calls == [16, 16, 16, 2]


def test_auto_measures_the_real_model_caches_and_reports(random_checkpoint, tmp_path):
    cache, reports = str(tmp_path / "cache"), tmp_path / "reports"
    p = Predictor(random_checkpoint, device="cpu", dtype="float32", batch_size=128, model_batch="auto", dtype_cache_dir=cache, report_to=str(reports))
    choice = p.model_batch_choice
    assert choice["cached"] is False and choice["key"]["purpose"] == "model-batch" and choice["key"]["dtype"] == "float32"
    times = {int(n): s for n, s in choice["seconds_per_image"].items()}
    assert sorted(times) == [32, 64, 128] and min(times.values()) > 0
    # The choice follows the figures it reports.
    fastest = min(times, key=times.get)
    expected = fastest if times[fastest] * (1 + precision.MARGIN) < times[128] else 128
    assert choice["model_batch"] == expected
    assert p.model_batch == (None if expected == 128 else expected)
    [report] = [json.loads(f.read_text()) for f in reports.iterdir() if not f.name.startswith("actor-")]
    assert report["model_batch"] == p.model_batch and report["model_batch_auto"]["seconds_per_image"] == choice["seconds_per_image"]
    # A second actor on this host reuses the decision; another dtype is another decision.
    again = Predictor(random_checkpoint, device="cpu", dtype="float32", batch_size=128, model_batch="auto", dtype_cache_dir=cache)
    assert again.model_batch_choice["cached"] is True and again.model_batch == p.model_batch
    other = Predictor(random_checkpoint, device="cpu", dtype="bfloat16", batch_size=128, model_batch="auto", dtype_cache_dir=cache)
    assert other.model_batch_choice["cached"] is False


def test_a_bad_model_batch_names_the_choices(random_checkpoint):
    with pytest.raises(ValueError, match="model_batch=0.*auto.*null.*positive"):
        Predictor(random_checkpoint, device="cpu", dtype="float32", model_batch=0)
