"""What CUDA-graph capture needs from the option-A shortcut and the deployed models, checked on CPU.

A captured graph replays fixed kernels on fixed addresses: a forward must build no index on the host per
call, never read a device value back (`.item()`, shape from data), and keep every tensor it reads in the
module's own state, which moves with `.to()`. The `meta` device has no data at all: a forward run there
can read no value back, and a dispatch spy sees every tensor its operators take or make, so a tensor made
on the host (an index built per call) is caught even where a meta kernel would accept it.

(The index assert `benchmarks/latency_gpu.py --graph` hit on an H200 came from the benchmark freeing each
captured model while its graph still read the weights and index buffers; see the comment in its `runner`.)
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import prunekit
from prunekit.measure import fold_batchnorm
from prunekit.models import create
from prunekit.models.layers import ZeroPadShortcut


class HostTensors(TorchDispatchMode):
    """Records every operator that takes or returns a tensor not on the meta device."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(
            isinstance(t, torch.Tensor) and t.device.type != "meta" for t in tree_leaves((args, kwargs, out))
        ):
            self.seen.append(str(func))
        return out


def run_on_meta(module: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
    with torch.no_grad(), HostTensors() as spy:
        out = module(x)
    return out, spy.seen


def test_the_spy_catches_an_index_built_on_the_host() -> None:
    class HostIndex(torch.nn.Module):
        def forward(self, x):
            return x.index_select(1, torch.arange(x.shape[1] // 2))  # a meta kernel accepts the CPU index

    out, seen = run_on_meta(HostIndex(), torch.empty(2, 4, 3, 3, device="meta"))
    assert out.shape == (2, 2, 3, 3) and seen == ["aten.arange.default", "aten.index_select.default"]


def test_the_shortcut_index_buffers_move_with_the_module_and_keep_their_dtype() -> None:
    shortcut = ZeroPadShortcut(4, 8)
    assert shortcut.src.tolist() == [0, 1, 2, 3] and shortcut.dst.tolist() == [2, 3, 4, 5]
    moved = shortcut.to("meta", torch.bfloat16)  # the benchmark's `.to(device, bf16)`
    assert moved.src.device.type == moved.dst.device.type == "meta"
    assert moved.src.dtype == moved.dst.dtype == torch.int64  # indices are not cast to the float dtype
    assert {"src", "dst"} <= set(ZeroPadShortcut(4, 8).state_dict())  # saved and loaded with the model


def test_the_shortcut_forward_needs_no_host_data() -> None:
    x = torch.arange(2 * 4 * 4 * 4, dtype=torch.float32).reshape(2, 4, 4, 4)
    expected = ZeroPadShortcut(4, 8)(x)
    # Channel c of the input at output channel c + 2, subsampled by 2; channels 0, 1, 6, 7 zero.
    assert torch.equal(expected[:, 2:6], x[:, :, ::2, ::2])
    assert not expected[:, [0, 1, 6, 7]].any()
    out, seen = run_on_meta(ZeroPadShortcut(4, 8).to("meta"), x.to("meta"))
    assert out.device.type == "meta" and out.shape == expected.shape == (2, 8, 2, 2) and seen == []


@pytest.mark.parametrize("pruned", [False, True])
def test_deployed_option_a_resnets_run_without_host_data(pruned: bool) -> None:
    torch.manual_seed(0)
    model = create("resnet20").eval()
    if pruned:  # pruning leaves uneven index maps in the shortcuts (some pairs dropped)
        model = prunekit.prune(model, torch.randn(2, 3, 32, 32), method="l1", ratio=0.4)
        maps = [m for m in model.modules() if isinstance(m, ZeroPadShortcut)]
        assert any(m.src.numel() < m.in_channels or m.dst.numel() < m.in_channels for m in maps)
    deployed = fold_batchnorm(model).to("meta", torch.bfloat16).to(memory_format=torch.channels_last)
    x = torch.empty(4, 3, 32, 32, device="meta", dtype=torch.bfloat16).to(memory_format=torch.channels_last)
    out, seen = run_on_meta(deployed, x)
    assert out.device.type == "meta" and out.shape == (4, 10) and seen == []
    for m in deployed.modules():
        if isinstance(m, ZeroPadShortcut):
            assert m.src.device.type == "meta" and m.src.dtype == torch.int64


def test_the_gpu_benchmark_keeps_each_captured_model_alive(monkeypatch) -> None:
    """`benchmarks/latency_gpu.py --graph`: the callable a graph replay is timed through must hold the model
    it captured, or the model's memory is reused while the graph still reads it. Checked on CPU with the
    CUDA stream/graph calls replaced by stand-ins that capture nothing."""
    import contextlib
    import gc
    import importlib.util
    import weakref

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("latency_gpu", REPO / "benchmarks" / "latency_gpu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    class Stream:
        def wait_stream(self, other) -> None:
            pass

    class Graph:
        def replay(self) -> None:
            pass

    for name, value in {
        "Stream": Stream,
        "current_stream": Stream,
        "stream": lambda s: contextlib.nullcontext(),
        "synchronize": lambda *a: None,
        "CUDAGraph": Graph,
        "graph": lambda g: contextlib.nullcontext(),
    }.items():
        monkeypatch.setattr(torch.cuda, name, value)
    deployed: list[weakref.ref] = []

    def fold(model):
        folded = fold_batchnorm(model)
        deployed.append(weakref.ref(folded))
        return folded

    monkeypatch.setattr(bench, "fold_batchnorm", fold)
    replay = bench.runner(
        create("resnet20").eval(), torch.randn(2, 3, 32, 32, dtype=torch.bfloat16), graph=True
    )
    gc.collect()
    assert deployed[0]() is not None  # alive as long as `replay` is
    del replay
    gc.collect()
    assert deployed[0]() is None
