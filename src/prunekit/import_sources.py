"""Whose code saved a checkpoint, and how its keys become the zoo's: the table `prunekit import --from`
offers. Kept free of torch so that building the CLI parser stays light."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Source:
    """Where a checkpoint comes from, and how its keys become the zoo's."""

    name: str
    description: str
    renames: tuple[tuple[str, str], ...] = ()  # regex → replacement, applied in order
    positional_vgg: bool = False  # HRank VGG: features.convN / features.normN by position


SOURCES: dict[str, Source] = {
    s.name: s
    for s in (
        Source(
            "hrank",
            "HRank CIFAR checkpoints (VGG-16 features.convN/normN, GoogLeNet inception_*, ResNet-110 linear)",
            renames=((r"^inception_(\w+)\.", r"\1."), (r"^linear\.", "fc.")),
            positional_vgg=True,
        ),
        Source(
            "tpp",
            "TPP/GReg state dicts (akamaster ResNets with `linear` head and `downsample`; vgg19_C)",
            renames=((r"^linear\.", "fc."), (r"\.downsample\.", ".shortcut.")),
        ),
        Source(
            "trp",
            "TRP (bearpaw CIFAR ResNet, 1x1-conv `downsample` shortcut)",
            renames=((r"\.downsample\.", ".shortcut."),),
        ),
        Source(
            "deephoyer",
            "DeepHoyer (bearpaw CIFAR ResNet with `downsample`; MNIST LeNets, MaskedLinear masks kept)",
            renames=((r"\.downsample\.", ".shortcut."),),
        ),
        Source(
            "bearpaw",
            "bearpaw/pytorch-classification CIFAR ResNets (1x1-conv `downsample` shortcut)",
            renames=((r"\.downsample\.", ".shortcut."),),
        ),
        Source("torchvision", "torchvision ImageNet ResNets (the zoo uses the same names)"),
        Source("state_dict", "a state dict already in the zoo's names (only `module.` is stripped)"),
    )
}

_EXAMPLES = (
    "examples:\n"
    "  prunekit import resnet_56.pt --from hrank --arch resnet56 --out r56.safetensors --data cifar10\n"
    "  prunekit import model_best.pth.tar --from trp --arch resnet20 --out r20.safetensors\n"
)


def epilog() -> str:
    """`prunekit import --help`'s examples and the table of sources."""
    return _EXAMPLES + "sources:\n" + "".join(f"  {s.name:<12}{s.description}\n" for s in SOURCES.values())
