"""The real Hydra configs compose; bad values fail early and name the valid choices."""

import pytest
from hydra.errors import MissingConfigException

from catalog_vision import storage as st
from catalog_vision.infer.predictor import Predictor
from conftest import make_cfg


def at(cfg: dict, dotted: str):
    for key in dotted.split("."):
        cfg = cfg[key]
    return cfg


# Per override set, values read off the YAML files in conf/ (the group file, then the experiment,
# then the command line): what composing must resolve to.
@pytest.mark.parametrize(
    "overrides, expected",
    [
        ([], {"model.name": "small_cnn", "trainer.epochs": 10, "trainer.batch_size": 128, "trainer.use_gpu": False, "predictor.num_gpus": 0,
              "data.preprocessing.image_size": [28, 28], "source.name": "fashion_mnist", "ray.address": None}),
        (["experiment=smoke"], {"trainer.epochs": 1, "trainer.batch_size": 64, "data.limit.train": 512, "data.limit.test": 128, "predictor.batch_size": 64,
                                "predictor.max_actors": 1, "output.rows_per_file": 1000}),
        (["experiment=fashion_mnist"], {"model.name": "small_cnn", "trainer.epochs": 15, "trainer.batch_size": 128, "trainer.lr": 0.003}),
        (["experiment=photos", "source=folders", "source.prefix=s3://bucket/photos"],
         {"model.name": "small_vgg", "model.stages": 5, "model.convs": 1, "data.preprocessing.image_size": [64, 64],
          "trainer.epochs": 20, "trainer.batch_size": 16, "trainer.augment.preset": "random_resized_crop", "trainer.augment.min_scale": 0.7,
          "predictor.batch_size": 128, "source.name": "folders", "source.prefix": "s3://bucket/photos", "source.label_level": "leaf"}),
        (["experiment=photos_imagenet", "source=table", "source.path=export.csv"],
         {"model.name": "resnet50", "model.pretrained": "imagenet", "data.preprocessing.image_size": [224, 224],
          "trainer.use_gpu": True, "trainer.num_workers": 4, "trainer.batch_size": 256, "trainer.epochs": 10, "trainer.lr": 0.001,
          "trainer.freeze_backbone_epochs": 1, "trainer.augment.min_scale": 0.35,
          "predictor.device": "cuda", "predictor.num_gpus": 1, "predictor.batch_size": 1024,
          "source.name": "table", "source.path": "export.csv", "source.columns.id": "image_id"}),
        (["storage=s3", "paths.root=s3://bucket/prefix", "predictor=gpu", "trainer=gpu", "ray=cluster", "model=resnet18"],
         {"storage.max_attempts": 10, "storage.read_timeout": 60, "paths.catalog": "s3://bucket/prefix/catalog",
          "paths.model": "s3://bucket/prefix/output/model", "paths.predictions": "s3://bucket/prefix/output/predictions",
          "predictor.device": "cuda", "predictor.num_gpus": 1, "predictor.jpeg_decode_on_device": True, "predictor.topk": 5,
          "trainer.use_gpu": True, "trainer.min_workers": 2, "trainer.optimizer": "adamw", "ray.address": "auto", "model.name": "resnet18"}),
    ],
)
def test_configs_compose(overrides, expected):
    cfg = make_cfg(*overrides)
    assert {k: at(cfg, k) for k in expected} == expected
    root = cfg["paths"]["root"]
    assert (cfg["paths"]["output"], cfg["paths"]["predictions"]) == (f"{root}/output", f"{root}/output/predictions")


def test_gpu_groups_inherit_cpu_defaults():
    cfg = make_cfg("predictor=gpu", "trainer=gpu")
    assert cfg["predictor"]["num_gpus"] == 1 and cfg["predictor"]["topk"] == 5
    assert cfg["trainer"]["use_gpu"] is True and cfg["trainer"]["optimizer"] == "adamw"


def test_unknown_group_option_lists_choices():
    with pytest.raises(MissingConfigException) as e:
        make_cfg("predictor=tpu")
    assert "cpu" in str(e.value) and "gpu" in str(e.value)


def test_bad_predictor_dtype_names_choices(random_checkpoint):
    with pytest.raises(ValueError, match="bfloat16.*float16.*float32"):
        Predictor(random_checkpoint, dtype="int3")
    with pytest.raises(ValueError, match="auto.*cpu.*cuda"):
        Predictor(random_checkpoint, device="tpu")


@pytest.mark.parametrize("value", [0, -2, "many", True, 2.5])
def test_bad_batches_per_task_names_choices_before_any_work(value):
    from catalog_vision.backfill.actors import check_predictor

    p = make_cfg(f"predictor.batches_per_task={value}")["predictor"]
    with pytest.raises(ValueError, match="batches_per_task=.*auto or a positive whole number"):
        check_predictor(p)


def test_batches_per_task_auto_sizes_tasks_by_pixels_and_keeps_every_actor_busy():
    from catalog_vision.backfill.plan import MIN_TASKS_PER_ACTOR, TASK_BYTES, batches_per_task

    cases = [(512, 784, 70_000, 2), (512, 784, 20_000, 2), (64, 3 * 224 * 224, 6_000, 2), (512, 784, 500, 2), (32, 784, 10**6, 8)]
    for batch, image_bytes, rows, actors in cases:
        k = batches_per_task("auto", batch, image_bytes, rows, actors)
        assert k >= 1
        if k > 1:  # more than one batch only while a task stays within TASK_BYTES and each actor gets enough tasks
            assert k * batch * image_bytes <= TASK_BYTES and rows // (k * batch) >= actors * MIN_TASKS_PER_ACTOR
        # one batch more would break one of the two
        assert (k + 1) * batch * image_bytes > TASK_BYTES or rows // ((k + 1) * batch) < actors * MIN_TASKS_PER_ACTOR
    assert batches_per_task(3, 512, 784, 100, 2) == 3  # a number is taken as it is


def test_cuda_requested_without_gpu_is_a_clear_error(random_checkpoint):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="no CUDA device"):
        Predictor(random_checkpoint, device="cuda")
    # device=auto falls back to the CPU
    assert Predictor(random_checkpoint, device="auto").device.type == "cpu"


def test_redact_hides_secrets():
    cfg = {"storage": {"endpoint_url": "http://x", "aws_secret_access_key": "s3cr3t", "token": "t"}, "nested": [{"password": "p"}]}
    red = st.redact(cfg)
    assert "s3cr3t" not in str(red) and "'t'" not in str(red) and "'p'" not in str(red)
    assert red["storage"]["endpoint_url"] == "http://x"


def test_actor_fault_settings_reach_ray_only_where_they_differ_from_ray_datas_default():
    """Ray Data's actor pools restart actors and resend their batches without limit (-1) unless told
    otherwise; the config's defaults equal that, so a default backfill passes nothing through
    map_batches' deprecated **ray_remote_args, and any other value still reaches Ray."""
    import inspect

    from ray.data._internal.execution.operators import actor_pool_map_operator

    from catalog_vision.backfill.actors import RAY_DATA_ACTOR_DEFAULT, actor_fault_args

    ray_source = inspect.getsource(actor_pool_map_operator)
    for key in ("max_restarts", "max_task_retries"):  # Ray's own default, read from its source, not assumed
        assert f'ray_remote_args["{key}"] = {RAY_DATA_ACTOR_DEFAULT}' in ray_source
    p = make_cfg()["predictor"]
    assert (p["max_restarts"], p["max_task_retries"]) == (RAY_DATA_ACTOR_DEFAULT, RAY_DATA_ACTOR_DEFAULT)
    assert actor_fault_args(p) == {}
    assert actor_fault_args({**p, "max_restarts": 0, "max_task_retries": 3, "resources": {"spot_gpu": 1}}) == {
        "max_restarts": 0, "max_task_retries": 3, "resources": {"spot_gpu": 1.0}}
