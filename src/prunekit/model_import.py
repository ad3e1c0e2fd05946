"""`prunekit import`: the checkpoints the papers released → prunekit model files.

A released checkpoint is a state dict in some container (`{'state_dict': ...}`, `{'net': ...}`, a bare
dict), often saved through `nn.DataParallel` (keys prefixed `module.`), with the original code's module
names. Importing reads it with `torch.load(weights_only=True)` only — never unpickles code — renames its
keys to the zoo's, fills what the original never stored (the option-A `ZeroPadShortcut` index buffers, BN
`num_batches_tracked` of pre-0.4 files), loads strictly, checks the outputs are finite and writes an
ordinary prunekit model file.

Renaming rules are per source and only ever rename a key into a key the target model has: a rule that does
not fit (`linear.` → `fc.` on a GoogLeNet, whose head *is* `linear`) leaves the key alone, and the strict
load then names whatever is left over.
"""

from __future__ import annotations

import inspect
import os
import pickle
import re
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from prunekit.errors import CheckpointError, ConfigError, unknown_name
from prunekit.import_sources import SOURCES, Source
from prunekit.models import create
from prunekit.models.layers import ZeroPadShortcut
from prunekit.models.registry import default_input_shape, model_entry

# Containers the papers' scripts save: HRank/bearpaw/TRP/DeepHoyer `state_dict`, kuangliu-style `net`,
# TPP's `model`, and a few common others. A bare dict of tensors is taken as it is.
CONTAINER_KEYS = ("state_dict", "net", "model", "model_state_dict", "params")

_SAFETENSORS_HEAD = b"{"


@dataclass(frozen=True)
class Imported:
    model: nn.Module
    renamed: dict[str, str]  # original key → zoo key, for keys whose name changed
    filled: tuple[str, ...]  # keys the file lacked and the zoo's construction supplied
    masks: tuple[str, ...]  # parameters whose element-wise masks came with the file
    info: dict[str, Any]


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The tensors of a released checkpoint, found inside its container; never unpickles code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    if _looks_like_safetensors(path):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path)))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{path}: unreadable safetensors file ({exc})") from None
    try:
        with torch.serialization.safe_globals(_numpy_data_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except (
        pickle.UnpicklingError,
        RuntimeError,
        EOFError,
        OSError,
        ValueError,
        zipfile.BadZipFile,
        UnicodeDecodeError,
    ) as exc:
        if "GLOBAL" in str(exc) or "Unsupported global" in str(exc):
            # weights_only refuses to import a class: the file pickles objects, not only tensors.
            raise _whole_model_error(path, exc) from None
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({_reason(exc)})") from None
    return _find_state_dict(path, obj)


def import_checkpoint(
    path: str | os.PathLike[str],
    source: str,
    arch: str,
    *,
    model_kwargs: Mapping[str, Any] | None = None,
    dataset: str | None = None,
    normalize: bool = True,
) -> Imported:
    """Read `path` (a checkpoint released with `source`'s code) into zoo architecture `arch`."""
    if source not in SOURCES:
        raise unknown_name("checkpoint source", source, list(SOURCES))
    model_entry(arch)  # an unknown architecture or dataset fails before the file is read
    if dataset is not None:
        from prunekit.data import list_datasets

        if dataset not in list_datasets():
            raise unknown_name("dataset", dataset, list_datasets())
    src = SOURCES[source]
    raw = read_state_dict(path)
    state = _strip_module_prefix(raw)
    kwargs = _model_kwargs(arch, src, state, model_kwargs or {})
    model = create(arch, **kwargs)
    target = model.state_dict()
    state, renamed = _rename(state, src, model)
    masks = _split_masks(state, target) if source == "deephoyer" else {}
    state, filled = _fill_constructed(state, model)
    _load_strictly(path, model, state, source, arch)
    if masks:
        from prunekit.surgery import record_masks  # pulls in torch-pruning: only when a file has masks

        record_masks(model, masks)
    model.eval()
    shape = default_input_shape(arch, kwargs.get("in_channels"))
    _check_finite(path, model, shape)
    info: dict[str, Any] = {
        "input_shape": list(shape),
        "normalize": normalize,
        "imported": {"source": source, "file": str(path), "renamed": len(renamed), "filled": list(filled)},
    }
    if dataset:
        info["dataset"] = dataset
    return Imported(model, renamed, filled, tuple(masks), info)


def import_to_file(
    path: str | os.PathLike[str],
    source: str,
    arch: str,
    out: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    **kwargs: Any,
) -> Imported:
    """`import_checkpoint`, then write the model file `out` atomically (reloads with `prunekit.load`)."""
    from prunekit import model_file

    out = Path(out)
    if out.suffix != ".safetensors":
        raise ConfigError(f"--out {out}: a prunekit model file ends in .safetensors")
    if out.resolve() == Path(path).resolve():
        raise ConfigError(f"--out {out} is the checkpoint being imported; choose another file")
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} already exists; choose another --out or pass --overwrite to replace it")
    try:  # an unwritable --out fails before the checkpoint is read
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot create {out.parent} ({exc.strerror})") from None
    if not os.access(out.parent, os.W_OK):
        raise ConfigError(f"--out {out}: {out.parent} is not writable; choose another --out")
    result = import_checkpoint(path, source, arch, **kwargs)
    try:
        model_file.save(result.model, out, info=result.info)
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot write it ({exc.strerror})") from None
    return result


# ---------------------------------------------------------------- reading


def _looks_like_safetensors(path: Path) -> bool:
    with path.open("rb") as fh:
        head = fh.read(9)
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return 0 < n <= path.stat().st_size - 8 and head[8:9] == _SAFETENSORS_HEAD


def _numpy_data_globals() -> list[Any]:
    """NumPy scalars and numeric arrays, which old training scripts saved beside the weights (`best_acc`
    as a numpy float): plain data, safe to allow; object arrays would still need refused globals."""
    import numpy as np

    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray  # type: ignore[no-redef]
    numeric = (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.float16, np.float32, np.float64)
    return [
        multiarray.scalar,
        multiarray._reconstruct,
        np.ndarray,
        np.dtype,
        *{type(np.dtype(t)) for t in numeric},
    ]


def _reason(exc: Exception) -> str:
    """The informative line of torch.load's error (its weights_only message is mostly boilerplate that
    suggests weights_only=False, which prunekit never does)."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _whole_model_error(path: Path, exc: Exception) -> CheckpointError:
    text = str(exc)
    match = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"global[^\w]*([\w.]+\.[\w]+)", text)
    what = f" (it needs the class {match.group(1)})" if match else ""
    return CheckpointError(
        f"{path} holds pickled Python objects{what}, such as a whole model saved with torch.save(model): "
        "prunekit never unpickles code. Extract its state dict with the original code, e.g. in the "
        "original repository: python -c \"import torch; c = torch.load('IN', weights_only=False); "
        "m = c['model'] if isinstance(c, dict) else c; torch.save(m.state_dict(), 'OUT.pth')\", then "
        "import OUT.pth"
    )


def _is_tensor_dict(obj: object) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, Tensor) for v in obj.values())


def _find_state_dict(path: Path, obj: object) -> dict[str, Tensor]:
    if _is_tensor_dict(obj):
        return dict(obj)  # type: ignore[arg-type]
    if isinstance(obj, Mapping):
        for key in CONTAINER_KEYS:
            inner = obj.get(key)
            if _is_tensor_dict(inner):
                return dict(inner)  # type: ignore[arg-type]
        if any(isinstance(v, Tensor) for v in obj.values()):
            # A state dict with non-tensor entries next to the tensors (e.g. a saved `epoch`).
            return {k: v for k, v in obj.items() if isinstance(v, Tensor)}
        keys = ", ".join(repr(k) for k in list(obj)[:8])
        raise CheckpointError(
            f"{path}: no state dict found; top-level keys are {keys} (looked in "
            f"{', '.join(CONTAINER_KEYS)} and at the top level)"
        )
    raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict")


# ---------------------------------------------------------------- mapping


def _strip_module_prefix(state: dict[str, Tensor]) -> dict[str, Tensor]:
    # DataParallel/DDP add `module.`; a model wrapped twice has it twice.
    return {re.sub(r"^(module\.)+", "", k): v for k, v in state.items()}


def _model_kwargs(
    arch: str, src: Source, state: Mapping[str, Tensor], given: Mapping[str, Any]
) -> dict[str, Any]:
    """Constructor arguments the file implies: the CIFAR ResNet shortcut, and the class and input-channel
    counts read off the classifier and the first layer (a CIFAR-100 or MNIST checkpoint needs no flags)."""
    kwargs: dict[str, Any] = {}
    if "shortcut" in inspect.signature(model_entry(arch).builder).parameters:  # the CIFAR ResNets
        # Projection tensors mean option B (bearpaw, TRP, DeepHoyer); HRank/TPP's F.pad stores none.
        has_projection = any(re.search(r"\.(downsample|shortcut)\.\d+\.weight$", k) for k in state)
        kwargs["shortcut"] = "B" if has_projection else "A"
    probe = create(arch, **kwargs)
    first = next((m for m in probe.modules() if isinstance(m, (nn.Conv2d, nn.Linear))), None)
    last = [n for n, m in probe.named_modules() if isinstance(m, nn.Linear)]
    weights = _rename(dict(state), src, probe)[0]
    if last and f"{last[-1]}.weight" in weights and weights[f"{last[-1]}.weight"].ndim == 2:
        kwargs["num_classes"] = int(weights[f"{last[-1]}.weight"].shape[0])
    if isinstance(first, nn.Conv2d):
        name = next(n for n, m in probe.named_modules() if m is first)
        w = weights.get(f"{name}.weight")
        if w is not None and w.ndim == 4:
            kwargs["in_channels"] = int(w.shape[1])
    kwargs.update(given)
    return kwargs


def _rename(
    state: dict[str, Tensor], src: Source, model: nn.Module
) -> tuple[dict[str, Tensor], dict[str, str]]:
    target = set(model.state_dict())
    rules: list[Callable[[str], str]] = [
        (lambda key, p=pattern, r=repl: re.sub(p, r, key)) for pattern, repl in src.renames
    ]
    if src.positional_vgg:
        rules.insert(0, _vgg_positional(state, model))
    out: dict[str, Tensor] = {}
    renamed: dict[str, str] = {}
    for key, value in state.items():
        new = key
        for rule in rules:
            candidate = rule(new)
            if candidate != new and candidate in target:
                new = candidate
        out[new] = value
        if new != key:
            renamed[key] = new
    return out, renamed


def _vgg_positional(state: Mapping[str, Tensor], model: nn.Module) -> Callable[[str], str]:
    """HRank names VGG layers by their position in the cfg list (`features.conv0`, `features.norm0`,
    `features.conv3` after a pool, ...); the zoo's `features` Sequential counts modules instead. The n-th
    convN (N ascending) is the n-th Conv2d of `features`, likewise normN and BatchNorm2d."""
    features = getattr(model, "features", None)
    if not isinstance(features, nn.Sequential):
        return lambda key: key
    ours = {
        kind: [str(i) for i, m in enumerate(features) if isinstance(m, cls)]
        for kind, cls in (("conv", nn.Conv2d), ("norm", nn.BatchNorm2d))
    }
    theirs: dict[str, list[int]] = {"conv": [], "norm": []}
    for key in state:
        m = re.match(r"^features\.(conv|norm)(\d+)\.", key)
        if m and int(m.group(2)) not in theirs[m.group(1)]:
            theirs[m.group(1)].append(int(m.group(2)))
    table = {
        (kind, str(n)): ours[kind][i]
        for kind in theirs
        for i, n in enumerate(sorted(theirs[kind]))
        if i < len(ours[kind])
    }

    def rule(key: str) -> str:
        m = re.match(r"^features\.(conv|norm)(\d+)\.(.*)$", key)
        if not m or (m.group(1), m.group(2)) not in table:
            return key
        return f"features.{table[(m.group(1), m.group(2))]}.{m.group(3)}"

    return rule


def _split_masks(state: dict[str, Tensor], target: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """DeepHoyer's MNIST `MaskedLinear` stores `fcN.mask` beside `fcN.weight`: keep it as a prunekit mask
    (the weights are already multiplied by it) when it removes anything."""
    masks = {}
    for key in [k for k in state if k.endswith(".mask")]:
        weight = key[: -len(".mask")] + ".weight"
        if key not in target and weight in target and state[key].shape == target[weight].shape:
            mask = state.pop(key) != 0
            if not bool(mask.all()):
                masks[weight] = mask
    return masks


def _fill_constructed(
    state: dict[str, Tensor], model: nn.Module
) -> tuple[dict[str, Tensor], tuple[str, ...]]:
    """Keys the originals never stored but the zoo's construction defines exactly: the option-A shortcut's
    index buffers (HRank/TPP implement it as a parameter-free F.pad) and BN's `num_batches_tracked`
    (absent from files saved before PyTorch 0.4.1)."""
    fresh = model.state_dict()
    shortcuts = {name for name, m in model.named_modules() if isinstance(m, ZeroPadShortcut)}
    filled = []
    for key, value in fresh.items():
        if key in state:
            continue
        owner, _, leaf = key.rpartition(".")
        if (owner in shortcuts and leaf in ("src", "dst")) or leaf == "num_batches_tracked":
            state[key] = value.clone()
            filled.append(key)
    return state, tuple(filled)


def _load_strictly(
    path: str | os.PathLike[str], model: nn.Module, state: dict[str, Tensor], source: str, arch: str
) -> None:
    target = model.state_dict()
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    wrong = sorted(k for k in set(target) & set(state) if target[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({_few(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({_few(unexpected)})")
        if wrong:
            k = wrong[0]
            parts.append(
                f"{len(wrong)} with another shape ({k}: file {tuple(state[k].shape)}, {arch} "
                f"{tuple(target[k].shape)})"
            )
        raise CheckpointError(
            f"{path} does not fit --arch {arch} with --from {source}: keys {'; '.join(parts)}. "
            "Check --arch and --from"
        )
    model.load_state_dict(state, strict=True)


def _few(keys: list[str], n: int = 4) -> str:
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "")


def _check_finite(path: str | os.PathLike[str], model: nn.Module, shape: tuple[int, ...]) -> None:
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        try:
            out = model(x)
        except RuntimeError as exc:
            raise CheckpointError(
                f"{path}: the imported model does not run on {shape} inputs ({exc})"
            ) from None
    if not bool(torch.isfinite(out).all()):
        bad = [
            k
            for k, v in model.state_dict().items()
            if v.is_floating_point() and not bool(torch.isfinite(v).all())
        ]
        where = f"; non-finite tensors: {_few(bad)}" if bad else ""
        raise CheckpointError(f"{path}: the imported model gives non-finite outputs{where}")
