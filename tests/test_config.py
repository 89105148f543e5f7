"""The real Hydra configs compose; bad values fail early and name the valid choices."""

import pytest
from hydra.errors import MissingConfigException

from catalog_vision import storage as st
from catalog_vision.infer import Predictor
from conftest import make_cfg


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["experiment=smoke"],
        ["experiment=fashion_mnist"],
        ["experiment=photos", "source=folders", "source.prefix=s3://bucket/photos"],
        ["experiment=photos_imagenet", "source=table", "source.path=export.csv"],
        ["storage=s3", "paths.root=s3://bucket/prefix", "predictor=gpu", "trainer=gpu", "ray=cluster", "model=resnet18"],
    ],
)
def test_configs_compose(overrides):
    cfg = make_cfg(*overrides)
    for group in ("storage", "data", "model", "trainer", "predictor", "ray", "paths", "source"):
        assert group in cfg
    assert cfg["paths"]["predictions"].startswith(cfg["paths"]["root"])


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
