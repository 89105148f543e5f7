"""``model.pretrained``: a weights file the user names, or torchvision's published ImageNet weights.

``imagenet`` (the architecture's ``DEFAULT`` weights enum) or ``imagenet:<ENUM>`` (e.g.
``imagenet:IMAGENET1K_V2``) is looked up, in order, in:

1. torch's hub cache, ``torch.hub.get_dir()/checkpoints/<file>`` (``$TORCH_HOME``), where
   ``<file>`` is the basename of the published URL: where torchvision itself keeps it;
2. ``model.weights_cache``: a folder or ``s3://`` prefix on shared storage holding the same file
   names, which air-gapped clusters pre-seed;
3. the published URL, downloaded into the hub cache and checked against the hash in its name.

Training resolves the weights once, on the driver, and hands the bytes to its workers: they may
have neither the cache nor the internet. Backfill and serving load trained checkpoints, never these.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from typing import Any, Mapping

from .architectures import MODELS

log = logging.getLogger("catalog_vision")

IMAGENET = "imagenet"
DOWNLOAD_TIMEOUT_S = 60.0  # per socket operation; a blackholed network must not hang the driver


class WeightsNotFound(FileNotFoundError):
    """Published weights that are neither cached nor downloadable; the message says what to place where."""


@dataclass(frozen=True)
class PublishedWeights:
    """One torchvision weights enum member: where it is published and what input it expects."""

    model: str
    name: str  # e.g. ResNet18_Weights.IMAGENET1K_V1
    url: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_size: int  # the input size the weights were trained and evaluated at
    resize_size: int  # the shorter side before that centre crop

    @property
    def file(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    def normalisation(self, channels: int) -> tuple[list[float], list[float]]:
        """``(mean, std)`` per input channel; a grayscale model (whose stem is the RGB stem summed,
        see :func:`.loading.load_backbone_state`) takes the mean of the RGB values."""
        if channels == 1:
            return [round(sum(self.mean) / 3, 6)], [round(sum(self.std) / 3, 6)]
        return list(self.mean), list(self.std)


@dataclass(frozen=True)
class Weights:
    """Resolved starting weights: the file's bytes, where they came from, what was asked for."""

    data: bytes
    source: str  # the path or URI read
    pretrained: str  # model.pretrained as configured
    published: PublishedWeights | None = None

    def load_into(self, model) -> list[str]:
        """Load into ``model``'s backbone; return the tensor names not used (the replaced classifier)."""
        from .loading import load_backbone_state, read_state_dict

        return load_backbone_state(model, read_state_dict(self.data, self.source), f"model.pretrained={self.pretrained} ({self.source})")

    def describe(self) -> dict[str, Any]:
        """Provenance for the checkpoint's ``model.json``."""
        out = {"pretrained": self.pretrained, "source": self.source, "sha256": hashlib.sha256(self.data).hexdigest()}
        if self.published:
            out.update(weights=self.published.name, url=self.published.url)
        return out


def is_published(pretrained: Any) -> bool:
    """Whether ``model.pretrained`` names published weights rather than a file."""
    return isinstance(pretrained, str) and (pretrained == IMAGENET or pretrained.startswith(IMAGENET + ":"))


def models_with_published_weights() -> list[str]:
    from .tv import load as load_torchvision

    torchvision = load_torchvision()

    out = []
    for name in MODELS:
        try:
            torchvision.models.get_model_weights(name)
        except ValueError:  # our own architectures (small_cnn, small_vgg)
            continue
        out.append(name)
    return out


def published_weights(model_name: str, pretrained: str = IMAGENET) -> PublishedWeights:
    """The torchvision weights ``pretrained`` (``imagenet`` or ``imagenet:<ENUM>``) names for a model."""
    from .tv import load as load_torchvision

    torchvision = load_torchvision()

    if model_name not in MODELS:
        raise ValueError(f"unknown model.name={model_name!r}; choose one of {sorted(MODELS)}")
    try:
        enum = torchvision.models.get_model_weights(model_name)
    except ValueError:
        raise ValueError(
            f"model.pretrained={pretrained}: {model_name} has no published ImageNet weights; models that do: "
            f"{models_with_published_weights()} (or set model.pretrained to the path or URI of a state_dict/safetensors file)"
        ) from None
    member = pretrained.split(":", 1)[1] if ":" in pretrained else "DEFAULT"
    try:
        w = enum[member]
    except KeyError:
        choices = [IMAGENET] + [f"{IMAGENET}:{m.name}" for m in enum]
        raise ValueError(f"model.pretrained={pretrained!r}: {model_name} has no weights {member!r}; choose one of {choices}") from None
    t = w.transforms()
    return PublishedWeights(
        model=model_name,
        name=f"{type(w).__name__}.{w.name}",
        url=w.url,
        mean=tuple(float(x) for x in t.mean),
        std=tuple(float(x) for x in t.std),
        crop_size=int(t.crop_size[0]),
        resize_size=int(t.resize_size[0]),
    )


def hub_path(file: str) -> str:
    """Where torch (and torchvision) cache a downloaded weights file: ``$TORCH_HOME/hub/checkpoints``."""
    import torch.hub

    return os.path.join(torch.hub.get_dir(), "checkpoints", file)


def resolve(model_cfg: Mapping[str, Any], storage: Mapping[str, Any] | None = None) -> Weights:
    """``model.pretrained`` → :class:`Weights`, or :class:`WeightsNotFound` naming what to place where."""
    from .. import storage as st

    pretrained = str(model_cfg["pretrained"])
    if not is_published(pretrained):
        return Weights(st.read_bytes(pretrained, storage), pretrained, pretrained)
    pub = published_weights(model_cfg["name"], pretrained)
    local = hub_path(pub.file)
    cache = model_cfg.get("weights_cache")
    cached = st.join(st.absolute(str(cache)), pub.file) if cache else None
    if os.path.isfile(local):
        source = local
    elif cached and st.exists(cached, storage):
        source = cached
    else:
        try:
            download(pub.url, local)
        except (OSError, ValueError) as e:  # URLError, timeouts, refused proxies, a read-only cache, a bad hash
            raise WeightsNotFound(_missing_message(pretrained, pub, local, cache, cached, e)) from None
        source = local
    weights = Weights(st.read_bytes(source, storage), source, pretrained, pub)
    sha = weights.describe()["sha256"]
    log.info("model.pretrained=%s: %s from %s (sha256 %s)", pretrained, pub.name, source, sha[:12])
    expected = _name_hash(pub.file)
    if not sha.startswith(expected):
        # Like torch, a cached file is used as found; a mismatch is worth a line (corrupt copy, other weights).
        log.warning("%s: sha256 %s does not start with the %s in its name: not the file published at %s", source, sha[:12], expected, pub.url)
    return weights


def _missing_message(pretrained: str, pub: PublishedWeights, local: str, cache: Any, cached: str | None, error: BaseException) -> str:
    where = f"{local} (torch's hub cache; TORCH_HOME moves it)"
    if cached:
        where += f" or {cached} (model.weights_cache={cache})"
    else:
        where += ", or into a shared folder or s3:// prefix named by model.weights_cache"
    return (
        f"model.pretrained={pretrained}: {pub.model}'s ImageNet weights {pub.name} are not cached and could not be downloaded. "
        f"Place the file {pub.file} (from {pub.url}) at {where}. Download of {pub.url} failed: {type(error).__name__}: {error}"
    )


def download(url: str, dst: str, timeout: float = DOWNLOAD_TIMEOUT_S) -> None:
    """Download ``url`` to ``dst`` atomically; when the file name carries a hash prefix
    (torchvision's ``<name>-<sha256 prefix>.pth``), the content must match it."""
    import urllib.request

    os.makedirs(os.path.dirname(dst), exist_ok=True)
    expected = _name_hash(os.path.basename(dst))
    tmp = f"{dst}.{os.getpid()}.{os.urandom(4).hex()}.partial"
    digest = hashlib.sha256()
    log.info("downloading %s to %s", url, dst)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as f:
            while chunk := response.read(1 << 20):
                f.write(chunk)
                digest.update(chunk)
        if not digest.hexdigest().startswith(expected):
            raise ValueError(f"{url}: sha256 {digest.hexdigest()[:len(expected)]}... does not match the {expected} in its name (corrupt or substituted download)")
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _name_hash(file: str) -> str:
    """The sha256 prefix in a torchvision weights file name (``resnet18-f37072fd.pth``), or ``''``."""
    from torch.hub import HASH_REGEX

    m = HASH_REGEX.search(file)
    return m.group(1) if m else ""


def adapt_preprocessing(model_cfg: Mapping[str, Any], preprocessing: Mapping[str, Any]) -> dict:
    """The preprocessing a run with ``model_cfg`` trains with: published weights bring the
    normalisation they were trained with (it replaces the data config's, with a log line)."""
    out = dict(preprocessing)
    pretrained = model_cfg.get("pretrained")
    if not is_published(pretrained):
        return out
    pub = published_weights(model_cfg["name"], pretrained)
    mean, std = pub.normalisation(int(out["channels"]))
    if [float(x) for x in out["mean"]] != mean or [float(x) for x in out["std"]] != std:
        log.info("model.pretrained=%s: normalisation mean=%s std=%s from %s replaces data.preprocessing mean=%s std=%s", pretrained, mean, std, pub.name, list(out["mean"]), list(out["std"]))
    out["mean"], out["std"] = mean, std
    size = [int(x) for x in out["image_size"]]
    if size != [pub.crop_size, pub.crop_size]:
        log.info(
            "model.pretrained=%s: %s was trained at %dx%d (shorter side %d, centre crop); data.preprocessing.image_size=%s "
            "(data.preprocessing.image_size=[%d,%d] data.preprocessing.fit=center_crop matches it)",
            pretrained, pub.name, pub.crop_size, pub.crop_size, pub.resize_size, size, pub.crop_size, pub.crop_size,
        )  # fmt: skip
    return out
