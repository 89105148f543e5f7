"""Models: the architectures by name (:mod:`.architectures`), the factory (:mod:`.factory`), the
classifier every architecture is wrapped in (:mod:`.classifier`), starting weights from a file
(:mod:`.loading`) or torchvision's published ImageNet weights (:mod:`.pretrained`)."""

from .architectures import MODELS, small_cnn, small_vgg
from .classifier import ImageClassifier, set_backbone_frozen
from .factory import build_model
from .loading import load_backbone_state, load_backbone_weights, read_state_dict
from .pretrained import WeightsNotFound, adapt_preprocessing, published_weights

__all__ = [
    "MODELS",
    "ImageClassifier",
    "WeightsNotFound",
    "adapt_preprocessing",
    "build_model",
    "load_backbone_state",
    "load_backbone_weights",
    "published_weights",
    "read_state_dict",
    "set_backbone_frozen",
    "small_cnn",
    "small_vgg",
]
