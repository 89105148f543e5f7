"""Ray Train on 2 CPU workers over real Fashion-MNIST images: the whole chain, locally and on S3."""

import hashlib
from pathlib import Path

import boto3
import pytest

from catalog_vision import checkpoint as ckpt, make_catalog
from catalog_vision.backfill.run import backfill
from catalog_vision.train.trainer import train
from catalog_vision.backfill.query import summarize
from conftest import BUCKET, make_cfg

pytestmark = pytest.mark.slow


def test_train_then_backfill_then_query(local_catalog, tmp_path):
    root = local_catalog["root"]
    cfg = make_cfg(
        "experiment=smoke",
        f"paths.root={root}",
        f"paths.output={tmp_path}/out",
        "trainer.epochs=3",
        "trainer.checkpoints_to_keep=3",
        "trainer.freeze_backbone_epochs=1",
    )
    summary = train(cfg)
    assert summary["train_rows"] == 512 and summary["val_rows"] == 128
    # It learned: validation loss falls and top-1 climbs from epoch to epoch (chance is 0.10).
    hist = summary["history"]
    assert hist[-1]["val/loss"] < hist[0]["val/loss"] and hist[-1]["val/top1"] >= hist[0]["val/top1"] + 0.05, hist
    # model_id is the hash of the exported weights file.
    weights = (Path(summary["checkpoint"]) / ckpt.WEIGHTS).read_bytes()
    assert summary["model_id"] == f"small_cnn-{hashlib.sha256(weights).hexdigest()[:12]}"
    loaded = ckpt.load(summary["checkpoint"])
    # The reported val/top1 is the exported model's accuracy on the val split, recomputed here
    # from the images (decoded by PIL here, not by the training pipeline).
    import duckdb
    import numpy as np
    from PIL import Image

    man = cfg["data"]["manifest"]
    val = duckdb.connect().execute(f"SELECT uri, label FROM read_parquet('{man}') WHERE split = 'val' ORDER BY image_id").fetchall()
    base = Path(man).parent
    x = np.stack([np.asarray(Image.open(u if u.startswith("/") else base / u).convert("L"))[None] for u, _ in val])
    import torch

    with torch.no_grad():
        pred = loaded.model.eval()(torch.from_numpy(x)).argmax(1).numpy()
    top1 = float(np.mean([loaded.classes[i] == lab for i, (_, lab) in zip(pred, val)]))
    # (training evaluates in the precision it trained in: bf16 may flip a near-tie or two)
    assert abs(top1 - summary["val/top1"]) <= 3 / len(val), (top1, summary["val/top1"])
    assert loaded.meta["preprocessing"] == cfg["data"]["preprocessing"]
    assert loaded.meta["classes"] == cfg["data"]["classes"]
    # Ray Train persisted per-epoch checkpoints under trainer.storage_path.
    run_dir = tmp_path / "out" / "train" / summary["ray_checkpoints"].rsplit("/", 1)[1]
    assert sorted(p.name for p in run_dir.glob("epoch_*")) == ["epoch_0000", "epoch_0001", "epoch_0002"]
    assert [h["frozen_backbone"] for h in loaded.meta["history"]] == [True, False, False]
    # trainer.cache_shard_mb: the first epoch streams from Ray Data, later ones come from each worker's memory
    assert [h["train/workers_from_memory"] for h in hist] == [0] + [h["workers"] for h in hist[1:]] and hist[1]["workers"] == 2
    # Epoch 1 trained only the head: the backbone (weights and BatchNorm statistics) is the seeded
    # initialisation. Epoch 2 unfroze it (DDP re-wrapped) and trained everything.
    import torch

    from catalog_vision.models import build_model
    from catalog_vision.train.recipe import seed_everything

    seed_everything(cfg["trainer"]["seed"])
    init = build_model(cfg["model"], 10, cfg["data"]["preprocessing"]).state_dict()
    e0, e1 = (ckpt.load(str(run_dir / f"epoch_000{i}")).model.state_dict() for i in (0, 1))
    backbone = [k for k in init if k.startswith("backbone.")]
    assert all(torch.equal(e0[k], init[k]) for k in backbone)
    assert not torch.equal(e0["head.weight"], init["head.weight"])
    assert not any(torch.equal(e1[k], e0[k]) for k in backbone if k.endswith("weight"))

    bf = backfill({**cfg, "predictor": {**cfg["predictor"], "checkpoint": summary["checkpoint"]}})
    assert bf["counts"]["inputs"] == bf["counts"]["predicted"] == 128
    s = summarize(bf["output"], cfg["data"]["manifest"], cfg["storage"])
    # The summary's accuracy is the rows' labels against the manifest's, joined here with DuckDB.
    expected = duckdb.connect().execute(
        f"SELECT avg(CAST(p.label = m.label AS DOUBLE)) FROM read_parquet('{bf['output']}/*.parquet') p "
        f"JOIN read_parquet('{man}') m USING (image_id)").fetchone()[0]
    assert s["labeled_rows"] == 128 and abs(s["accuracy"] - expected) < 1e-12
    assert sum(s["label_counts"].values()) == 128


def test_train_reads_catalog_and_writes_checkpoints_on_s3(ray_local, s3_endpoint, fmnist):
    import io

    import torch

    root = f"s3://{BUCKET}/train-s3"
    # The rest of the recipe rides along: mixup+cutmix, class weights, accumulation, one-cycle.
    recipe = ["trainer.augment.mixup_alpha=0.2", "trainer.augment.cutmix_alpha=1.0", "trainer.imbalance=class_weights", "trainer.accumulate_steps=2", "trainer.schedule=onecycle",
              "trainer.epochs=2", "trainer.batch_size=16"]
    cfg = make_cfg("experiment=smoke", "storage=s3", f"paths.root={root}", f"data.source={fmnist}", "data.limit.train=256", "data.limit.val=64", "data.limit.test=0", *recipe)
    make_catalog(cfg)
    summary = train(cfg)
    assert [h["epoch"] for h in summary["history"]] == [0, 1] and summary["train_rows"] == 256
    assert summary["checkpoint"] == f"{root}/output/model"
    loaded = ckpt.load(summary["checkpoint"], cfg["storage"])
    assert loaded.model_id == summary["model_id"]
    s3 = boto3.client("s3")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="train-s3/output/train/")["Contents"]]
    assert any(k.endswith("epoch_0000/model.safetensors") for k in keys), keys

    # Accumulation: each of the 2 workers sees 128 images in batches of 16, so 8 batches and, with
    # accumulate_steps=2, 4 optimizer (and scheduler) steps per epoch. The epoch checkpoints' scheduler
    # states count them; the learning rate recorded per epoch is one-cycle's after that many steps.
    t = cfg["trainer"]
    steps_per_epoch = 256 // t["num_workers"] // t["batch_size"] // t["accumulate_steps"]
    assert steps_per_epoch == 4
    states = [torch.load(io.BytesIO(s3.get_object(Bucket=BUCKET, Key=k)["Body"].read()), weights_only=True)
              for k in sorted(k for k in keys if k.endswith("/train_state.pt"))]
    assert [st["scheduler"]["last_epoch"] for st in states] == [steps_per_epoch, 2 * steps_per_epoch]
    replay = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=t["lr"])
    one_cycle = torch.optim.lr_scheduler.OneCycleLR(replay, max_lr=t["lr"], total_steps=t["epochs"] * steps_per_epoch, pct_start=t["warmup_epochs"] / t["epochs"])
    expected = []
    for _ in range(t["epochs"]):
        for _ in range(steps_per_epoch):
            replay.step()
            one_cycle.step()
        expected.append(one_cycle.get_last_lr()[0])
    assert [h["lr"] for h in summary["history"]] == pytest.approx(expected, rel=1e-9)
