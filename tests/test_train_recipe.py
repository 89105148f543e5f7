"""The training recipe's parts, without Ray: losses, weights, thresholds, augmentation, tiles."""

import numpy as np
import pytest
import torch

from catalog_vision.train import transforms
from catalog_vision.catalogs import make_tiles
from catalog_vision.ingest.labels import to_training
from catalog_vision.train.recipe import Step, check_trainer, class_weights, make_scheduler, monitor_of
from catalog_vision.train.metrics import choose_thresholds, multilabel_val_metrics
from conftest import make_cfg


def trainer(*overrides):
    return make_cfg(*overrides)["trainer"]


@pytest.mark.parametrize(
    "override,key",
    [("trainer.optimizer=lion", "trainer.optimizer"), ("trainer.schedule=step", "trainer.schedule"), ("trainer.imbalance=smote", "trainer.imbalance"),
     ("trainer.augment.preset=autoaugment", "trainer.augment.preset"), ("trainer.precision=int8", "trainer.precision")],
)
def test_bad_recipe_values_name_the_choices(override, key):
    with pytest.raises(ValueError) as e:
        check_trainer(trainer(override), "multiclass")
    assert key in str(e.value) and "choose one of" in str(e.value)


def test_bad_task_and_weighted_sampling_for_multilabel():
    with pytest.raises(ValueError, match="multiclass"):
        check_trainer(trainer(), "regression")
    with pytest.raises(ValueError, match="weighted_sampling"):
        check_trainer(trainer("trainer.imbalance=weighted_sampling"), "multilabel")


def test_monitor_defaults_follow_the_task():
    assert monitor_of({}, "multiclass") == ("val/top1", "max")
    assert monitor_of({}, "multilabel") == ("val/f1_macro", "max")
    assert monitor_of({"monitor": "val/loss"}, "multiclass") == ("val/loss", "min")


def test_class_weights_are_inverse_frequency():
    w = class_weights([100, 10, 1], "multiclass", 111)
    assert w[2] / w[1] == pytest.approx(10) and w[1] / w[0] == pytest.approx(10)
    assert w.mean().item() == pytest.approx(1.0)
    pos = class_weights([25, 50], "multilabel", 100)
    assert pos.tolist() == pytest.approx([3.0, 1.0])  # negatives / positives


def test_weighted_sampling_balances_a_skewed_batch():
    torch.manual_seed(0)
    step = Step({**trainer("trainer.imbalance=weighted_sampling"), "augment": {"preset": "none"}}, "multiclass", 2, (8, 8), [900, 100], 1000, torch.device("cpu"))
    y = torch.tensor([0] * 900 + [1] * 100)
    _, _, ys = step.prepare({"pixels": torch.zeros(1000, 1, 8, 8, dtype=torch.uint8), "y": y})
    share = ys.float().mean().item()
    assert 0.44 < share < 0.56, share  # 10% minority → about half of the resampled batch


def test_class_weighted_loss_upweights_the_rare_class():
    step = Step(trainer("trainer.imbalance=class_weights"), "multiclass", 2, (8, 8), [90, 10], 100, torch.device("cpu"))
    logits = torch.zeros(2, 2)
    per = step.loss(logits, torch.tensor([0, 1]), reduction="none")
    assert per[1] / per[0] == pytest.approx(9.0)


def test_choose_thresholds_picks_the_best_f1_cut():
    scores = np.array([[0.9, 0.2], [0.8, 0.35], [0.3, 0.3], [0.1, 0.1]], dtype=np.float32)
    targets = np.array([[1, 1], [1, 1], [0, 0], [0, 0]], dtype=np.float32)
    th = choose_thresholds(scores, targets)
    # Label 0 separates at 0.8; label 1 has positives 0.2 and 0.35 and a negative at 0.3: F1 is best
    # (0.8: recall 1, precision 2/3) with every score >= 0.2 positive.
    assert th == pytest.approx([0.8, 0.2])
    m = multilabel_val_metrics(scores, targets, th)
    assert m["val/hamming_loss"] == pytest.approx(1 / 8)  # one false positive in 8 decisions
    assert m["val/f1_macro@0.5"] == pytest.approx(0.5)  # label 0 perfect, label 1 never above 0.5


@pytest.mark.parametrize("preset", ["pad_crop_flip", "random_resized_crop", "trivial_augment", "rand_augment"])
def test_presets_keep_shape_and_dtype_and_vary_per_image(preset):
    torch.manual_seed(0)
    pipe = transforms.build({"preset": preset, "pad": 4, "erasing": 0.5}, (28, 28))
    x = torch.arange(28 * 28, dtype=torch.int64).reshape(1, 1, 28, 28).remainder(251).to(torch.uint8).repeat(16, 1, 1, 1)
    out = transforms.apply(pipe, x)
    assert out.shape == x.shape and out.dtype == torch.uint8
    assert len({o.numpy().tobytes() for o in out}) > 8  # fresh parameters per image, not per batch
    assert transforms.apply(transforms.build({"preset": "none"}, (28, 28)), x) is x


def test_mixup_cutmix_give_soft_labels():
    mix = transforms.batch_mix({"mixup_alpha": 0.2, "cutmix_alpha": 1.0}, 10)
    x, y = mix(torch.rand(8, 1, 28, 28) * 255, torch.arange(8))
    assert y.shape == (8, 10) and torch.allclose(y.sum(1), torch.ones(8))
    assert transforms.batch_mix({}, 10) is None


def test_onecycle_schedule_rises_to_the_peak_and_anneals():
    t = trainer("trainer.schedule=onecycle", "trainer.epochs=2")
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=t["lr"])
    sched = make_scheduler(opt, t, steps_per_epoch=10)
    lrs = []
    for _ in range(20):
        opt.step()
        sched.step()
        lrs.append(sched.get_last_lr()[0])
    assert max(lrs) == pytest.approx(t["lr"], rel=0.05) and lrs[-1] < t["lr"] / 50
    assert lrs.index(max(lrs)) < 10  # warmup (the rising phase) ends in the first epoch


@pytest.mark.parametrize("steps_per_epoch, epochs, warmup_epochs", [(2, 2, 0.5), (10, 2, 0.0), (1, 2, 1.0), (3, 1, 0.5)])
def test_onecycle_runs_when_the_rising_phase_would_be_one_step(steps_per_epoch, epochs, warmup_epochs):
    """torch's OneCycleLR divides by (pct_start * total_steps - 1): a rise of exactly one step (a short
    run, or 20 steps at the 5% floor) crashed training at its first step with a ZeroDivisionError."""
    t = trainer("trainer.schedule=onecycle", f"trainer.epochs={epochs}", f"trainer.warmup_epochs={warmup_epochs}")
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=t["lr"])
    sched = make_scheduler(opt, t, steps_per_epoch=steps_per_epoch)
    lrs = [sched.get_last_lr()[0]]
    for _ in range(steps_per_epoch * epochs):
        opt.step()
        sched.step()
        lrs.append(sched.get_last_lr()[0])
    used = lrs[:-1]  # the rates the optimizer steps ran with (the last entry follows the last step)
    assert max(used) <= t["lr"] * (1 + 1e-9) and used[-1] < t["lr"] / 50


def test_tiles_are_multilabel_and_never_share_items():
    x = np.stack([np.full((28, 28), i + 1, np.uint8) for i in range(40)])
    y = np.arange(40) % 10
    tiles, labels = make_tiles(x, y, grid=2, fill=0.6, seed=0)
    assert tiles.shape == (10, 56, 56)
    for t, (img, lab) in enumerate(zip(tiles, labels)):
        cells = {int(img[r * 28, q * 28]) for r in range(2) for q in range(2)} - {0}
        assert cells and cells <= set(range(4 * t + 1, 4 * t + 5))  # only this tile's own items
        assert lab == sorted({int(y[c - 1]) for c in cells})
    batch = {"pixels": tiles[:, None], "labels": np.array([[str(v) for v in lab] for lab in labels], dtype=object), "error": np.array([None] * 10, dtype=object)}
    out = to_training(batch, [str(i) for i in range(10)], task="multilabel")
    assert out["y"].shape == (10, 10) and out["y"].sum(1).tolist() == [len(lab) for lab in labels]
