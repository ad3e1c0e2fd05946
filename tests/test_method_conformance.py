"""Every registered method passes the same checks (scikit-learn's `check_estimator` idea).

A new method is checked automatically: its options build from defaults and from strings, a MAC budget (or,
for element-wise pruning, a density budget) is met within 2 % on ResNet-20, every option either changes
the result or is refused, the pruned file round-trips, and the same inputs give the same model.
"""

from __future__ import annotations

import dataclasses
import typing

import pytest
import torch
from torch import nn

import prunekit
from prunekit import model_file
from prunekit.errors import PrunekitError
from prunekit.measure import cost
from prunekit.methods import create_method, list_methods, method_class
from prunekit.models import create

METHODS = list_methods()


def _calib(shape: tuple[int, ...], n: int = 8) -> torch.Tensor:
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(0))


def _budget_options(name: str) -> dict[str, object]:
    """Options that make the method remove structure (a MAC budget needs channels to go). A method whose
    defaults assume trained weights (TRP's singular-value threshold) declares `conformance_options` that
    act on these untrained networks."""
    if "structural" in _fields(name):
        return {"structural": True}
    return dict(getattr(method_class(name), "conformance_options", {}))


def _fields(name: str) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(method_class(name).Options) if f.init}


def _trained_like(model: nn.Module) -> nn.Module:
    """Random BN statistics and scales, as a trained network has (slimming's criterion reads γ)."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data = torch.rand(m.num_features, generator=g) + 0.1
    return model


@pytest.mark.parametrize("name", METHODS)
def test_options_build_from_defaults_and_from_strings(name: str) -> None:
    default = create_method(name).options
    hints = typing.get_type_hints(method_class(name).Options)
    as_text = {}
    for key in _fields(name):
        value = getattr(default, key)
        if value is None:
            continue
        if isinstance(value, tuple):
            as_text[key] = ",".join(map(str, value))
        elif hints[key] is str or isinstance(value, str):
            as_text[key] = value
        else:
            as_text[key] = str(value).lower() if isinstance(value, bool) else repr(value)
    assert create_method(name, **as_text).options == default


@pytest.mark.parametrize("name", METHODS)
def test_mac_budget_is_met_on_resnet20(name: str) -> None:
    model = _trained_like(create("resnet20"))
    x = _calib((3, 32, 32))
    dense = cost(model, (3, 32, 32)).macs
    pruned = prunekit.prune(model, x[:1], method=name, target_macs=0.5, calib=x, **_budget_options(name))
    reached = cost(pruned, (3, 32, 32)).macs / dense
    assert abs(reached - 0.5) <= 0.02 * 0.5, f"{name} reached {reached:.4f}"
    assert pruned(x).shape == (8, 10)


def test_elementwise_deephoyer_meets_a_density_budget() -> None:
    model = create("resnet20")
    x = _calib((3, 32, 32))
    pruned = prunekit.prune(model, x[:1], method="deephoyer", target_density=0.3, calib=x)
    weights = [m.weight for m in pruned.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    density = sum(int((w != 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert abs(density - 0.3) <= 0.02 * 0.3
    assert pruned.prunekit_masks  # the zeros are recorded, so fine-tuning and the file keep them


def _variant(value: object, hint: object) -> object:
    """A different valid-looking value of the same type: the other choice, the flipped bool, a scaled
    number (ratios stay below 1)."""
    if typing.get_origin(hint) is typing.Literal:
        return next(v for v in typing.get_args(hint) if v != value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return 1 if value > 2 else value + 1
    if isinstance(value, float):
        return value / 2 if value > 0 else 0.1
    if isinstance(value, str):
        return "0.25" if value == "0.5" else None
    return None


def _result(name: str, options: dict[str, object]) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = _trained_like(create("resnet20"))
    x = _calib((3, 32, 32))
    return prunekit.prune(model, x[:1], method=name, calib=x, **options).state_dict()


def _after_two_steps(method: object) -> dict[str, torch.Tensor]:
    """Weights and gradients after the method's training hooks ran on steps 1 and 2 (a period shows)."""
    torch.manual_seed(0)
    model = _trained_like(create("resnet20"))
    model(_calib((3, 32, 32))).square().mean().backward()
    for step in (1, 2):
        method.after_backward(model, step)
        method.after_step(model, step)
    state = {k: v.detach().clone() for k, v in model.named_parameters()}
    state.update({f"{k}.grad": v.grad.clone() for k, v in model.named_parameters() if v.grad is not None})
    return state


@pytest.mark.parametrize("name", METHODS)
def test_every_option_changes_the_result_or_is_refused(name: str) -> None:
    """No silent no-ops: an option set to another value must change the pruned model or be refused with
    a prunekit error. Options that only trade speed or memory declare ``metadata={"effect": "speed"}``;
    options of the sparsify stage (``"sparsify"``) must change the penalty instead; limits that act only
    when the weights reach them (``"data"``, e.g. a per-layer cap) are tested by the method's own tests;
    options of the training hooks (``"train"``) must change the weights or gradients after two steps of
    `after_backward` + `after_step`."""
    hints = typing.get_type_hints(method_class(name).Options)
    base_options = _budget_options(name)
    base = _result(name, base_options)
    model = _trained_like(create("resnet20"))
    for key, f in _fields(name).items():
        if f.metadata.get("effect") in ("speed", "data") or key in base_options:
            continue
        value = _variant(getattr(create_method(name).options, key), hints[key])
        if value is None:
            continue
        try:
            if f.metadata.get("effect") == "sparsify":
                a = create_method(name, **base_options).penalty(model, 1)
                b = create_method(name, **base_options, **{key: value}).penalty(model, 1)
                assert a is not None and b is not None and not torch.equal(a, b), (
                    f"{name}.{key} changed nothing"
                )
                continue
            if f.metadata.get("effect") == "train":
                a = _after_two_steps(create_method(name, **base_options))
                b = _after_two_steps(create_method(name, **base_options, **{key: value}))
                assert any(not torch.equal(a[k], b[k]) for k in a), f"{name}.{key} changed nothing"
                continue
            other = _result(name, {**base_options, key: value})
        except PrunekitError:
            continue  # refused loudly: fine
        same = other.keys() == base.keys() and all(
            other[k].shape == base[k].shape and torch.equal(other[k], base[k]) for k in base
        )
        assert not same, f"option {key}={value!r} of {name!r} changed nothing"


@pytest.mark.parametrize("name", METHODS)
def test_save_load_round_trip_and_determinism(name: str, tmp_path) -> None:
    options = _budget_options(name)
    first = _result(name, options)
    assert all(torch.equal(first[k], v) for k, v in _result(name, options).items())
    torch.manual_seed(0)
    model = _trained_like(create("resnet20"))
    x = _calib((3, 32, 32))
    pruned = prunekit.prune(model, x[:1], method=name, calib=x, **options).eval()
    model_file.save(pruned, tmp_path / "m.safetensors")
    again = model_file.load(tmp_path / "m.safetensors").eval()
    with torch.no_grad():
        assert torch.equal(pruned(x), again(x))


def _cli_budget(name: str) -> list[str]:
    if create_method(name, **_budget_options(name)).budget_kind() == "density":
        return ["--target-density", "0.5"]
    return ["--target-macs", "0.6"]


@pytest.mark.parametrize("name", METHODS)
def test_the_cli_and_the_python_api_prune_alike(name: str, tmp_path) -> None:
    """`prunekit prune` (no fine-tuning) and `prunekit.prune` on the same dense model, options, budget and
    calibration images give the same model: the CLI adds a run folder, never another result."""
    from conftest import SYNTHETIC_28
    from prunekit.cli import main
    from prunekit.pipeline import DataSpec, calibration_batch

    torch.manual_seed(0)
    dense = _trained_like(create("resnet20", in_channels=1)).eval()
    model_file.save(dense, tmp_path / "dense.safetensors", info={"dataset": "synthetic"})
    options = _budget_options(name)
    argv = ["prune", str(tmp_path / "dense.safetensors"), "--method", name, *_cli_budget(name)]
    argv += [f"--option={k}={str(v).lower()}" for k, v in options.items()]
    argv += [*SYNTHETIC_28, "--finetune-epochs", "0", "--calib-images", "64", "--out", str(tmp_path / "p")]
    assert main(argv) == 0
    from_cli = model_file.load(tmp_path / "p" / "model.safetensors").eval()

    data = DataSpec(
        "synthetic", limit_train=256, limit_test=128, batch_size=64, options={"shape": (1, 28, 28)}
    )
    # The same images the run drew: the first batches of its seeded training loader.
    calib = calibration_batch(data.loaders(torch.device("cpu"))[0], 64)
    flag, value = _cli_budget(name)
    budget = {flag.lstrip("-").replace("-", "_"): float(value)}
    from_api = prunekit.prune(dense, calib[:1], method=name, calib=calib, **options, **budget).eval()
    x = _calib((1, 28, 28))
    assert from_cli.state_dict().keys() == from_api.state_dict().keys()
    with torch.no_grad():
        torch.testing.assert_close(from_cli(x), from_api(x), rtol=0, atol=0)
