"""The model zoo: `create(name, num_classes=..., in_channels=..., **kw)` and `list_models()`."""

# Importing each family registers its architectures.
from prunekit.models import densenet, googlenet, lenet, resnet_cifar, resnet_imagenet, vgg  # noqa: F401
from prunekit.models.registry import create, default_input_shape, list_models, model_entry, register_model

__all__ = ["create", "default_input_shape", "list_models", "model_entry", "register_model"]
