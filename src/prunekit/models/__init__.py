"""The model zoo: `create(name, num_classes=..., in_channels=..., **kw)`, `list_models()`, and where each
conv's feature maps come out (`feature_taps(model, kind)`)."""

# Importing each family registers its architectures.
from prunekit.models import (  # noqa: F401
    alexnet,
    densenet,
    densenet_bc,
    googlenet,
    lenet,
    preresnet,
    resnet_cifar,
    resnet_imagenet,
    resnext,
    vgg,
    wide_resnet,
)
from prunekit.models.registry import create, default_input_shape, list_models, model_entry, register_model
from prunekit.models.taps import FeatureTap, TapKind, feature_taps

__all__ = [
    "FeatureTap",
    "TapKind",
    "create",
    "default_input_shape",
    "feature_taps",
    "list_models",
    "model_entry",
    "register_model",
]
