"""ONNX export of a (pruned, masked, low-rank or user) model: BN folded, dynamic batch axis, and the
outputs of the ONNX file checked against PyTorch on real inputs before the file is written (atomically).

onnx and onnxruntime are optional (``pip install prunekit[onnx]``); without them `export_onnx` says so.
The TorchScript-based exporter is used (``dynamo=False``): on the zoo it is ~20× faster than the
torch.export-based one and needs no onnxscript; its DeprecationWarning is silenced here. A model with an
operator ONNX cannot express is exported layer by layer to name the first layer that fails.
"""

from __future__ import annotations

import copy
import io
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from prunekit.errors import ConfigError, PrunekitError

#: Default ONNX opset: supported by onnxruntime ≥ 1.12 and every exporter torch ships.
OPSET = 17
#: Outputs may differ by float round-off: |onnx - torch| ≤ ATOL + RTOL · max|torch|.
ATOL, RTOL = 1e-4, 1e-4


class ExportError(PrunekitError):
    """The model cannot be exported, or the exported file computes something else."""


@dataclass(frozen=True)
class ExportReport:
    path: Path
    opset: int
    max_abs_diff: float  # largest |onnx - torch| over the checked outputs
    checked_batches: tuple[int, ...]  # batch sizes run through onnxruntime (the dynamic axis)
    folded_batchnorms: int
    bytes: int


def _require_onnx() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise ConfigError(
            "ONNX export needs the optional packages onnx and onnxruntime: pip install 'prunekit[onnx]'"
        ) from None
    return onnx, onnxruntime


def _export_bytes(model: nn.Module, example: Tensor, opset: int, dynamic: bool = True) -> bytes:
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            model,
            (example,),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}} if dynamic else None,
            do_constant_folding=True,
        )
    return buffer.getvalue()


def _first_failing_layer(model: nn.Module, example: Tensor, opset: int) -> str | None:
    """Export every leaf module alone, on the input it sees in `model`, in execution order; the first that
    fails is the layer ONNX cannot express."""
    inputs: dict[str, tuple[Any, ...]] = {}
    names = {m: n for n, m in model.named_modules()}
    leaves = [m for m in model.modules() if not list(m.children()) and m is not model]

    def record(module: nn.Module, args: tuple[Any, ...]) -> None:
        inputs.setdefault(names[module], args)

    handles = [m.register_forward_pre_hook(record) for m in leaves]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    for name, args in inputs.items():
        if len(args) != 1 or not isinstance(args[0], Tensor):
            continue
        module = model.get_submodule(name)
        try:
            _export_bytes(module, args[0], opset, dynamic=False)
        except Exception as exc:  # the exporter fails in many ways; each means "not expressible"
            return f"layer {name!r} ({type(module).__name__}): {_first_line(exc)}"
    return None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def _session(onnx_bytes: bytes, threads: int = 1) -> Any:
    _, ort = _require_onnx()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])


def onnx_session(path: str | os.PathLike[str], threads: int = 1) -> Any:
    """An onnxruntime CPU session on an exported file with the thread count fixed (what `profile` times)."""
    return _session(Path(path).read_bytes(), threads)


def export_onnx(
    model: nn.Module,
    inputs: Tensor,
    out: str | os.PathLike[str],
    *,
    opset: int = OPSET,
    fold_bn: bool = True,
) -> ExportReport:
    """Write `model` (eval form; BN folded when `fold_bn`) as ONNX to `out` with a dynamic batch axis.

    `inputs` is a batch of real inputs (N, C, H, W), N ≥ 1: the file is run by onnxruntime on all of them
    and on the first one alone (another batch size, so the dynamic axis is checked), and its outputs must
    match the PyTorch model's before anything is written. The write is atomic."""
    onnx, _ = _require_onnx()
    if not isinstance(inputs, Tensor) or inputs.dim() < 2 or len(inputs) == 0:
        raise ConfigError("ONNX export needs a non-empty batch of real inputs (N, C, H, W) to check against")
    out_path = Path(out)
    if out_path.suffix != ".onnx":
        raise ConfigError(f"ONNX export writes a .onnx file; got {str(out_path)!r}")
    if out_path.parent and not out_path.parent.exists():
        raise ConfigError(f"the folder of {str(out_path)!r} does not exist")
    from prunekit.measure.deployment import fold_batchnorm

    reference = copy.deepcopy(model).cpu().float().eval()
    inputs = inputs.detach().cpu().float()
    with torch.no_grad():
        expected = reference(inputs)
    if not isinstance(expected, Tensor):
        raise ConfigError("ONNX export supports models that return one tensor")
    batchnorms = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in reference.modules())
    deployed = fold_batchnorm(reference) if fold_bn else reference
    folded = batchnorms - sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in deployed.modules())
    try:
        data = _export_bytes(deployed, inputs[:1], opset)
    except Exception as exc:
        where = _first_failing_layer(deployed, inputs[:1], opset)
        raise ExportError(
            "ONNX cannot express this model: "
            + (where or f"an operation in {type(model).__name__}.forward itself ({_first_line(exc)})")
        ) from None
    try:
        onnx.checker.check_model(onnx.load_from_string(data))
    except Exception as exc:
        raise ExportError(f"the exported ONNX graph is invalid: {_first_line(exc)}") from None
    session = _session(data)
    worst = 0.0
    checked: list[int] = []
    for batch in dict.fromkeys((len(inputs), 1)):
        got = torch.from_numpy(session.run(None, {"input": inputs[:batch].numpy()})[0])
        want = expected[:batch]
        if got.shape != want.shape:
            raise ExportError(f"the ONNX model returns shape {tuple(got.shape)}, PyTorch {tuple(want.shape)}")
        diff = float((got - want).abs().max())
        bound = ATOL + RTOL * float(want.abs().max())
        if not diff <= bound:
            raise ExportError(
                f"the ONNX model's outputs differ from PyTorch's by up to {diff:.3g} at batch {batch} "
                f"(allowed {bound:.3g}); nothing was written"
            )
        worst = max(worst, diff)
        checked.append(batch)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return ExportReport(out_path, opset, worst, tuple(checked), folded, len(data))


def onnx_latency(
    path: str | os.PathLike[str],
    input_shape: Sequence[int],
    *,
    batch_size: int = 1,
    threads: int = 1,
    warmup: int = 10,
    repeats: int = 50,
) -> list[float]:
    """ms per forward of the exported file in onnxruntime (threads fixed), in the order measured."""
    import time

    session = onnx_session(path, threads)
    x = torch.randn(batch_size, *input_shape, generator=torch.Generator().manual_seed(0)).numpy()
    for _ in range(warmup):
        session.run(None, {"input": x})
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, {"input": x})
        samples.append((time.perf_counter() - start) * 1e3)
    return samples


def export_model_file(
    checkpoint: str | os.PathLike[str], out: str | os.PathLike[str], data: Any, fmt: str = "onnx"
) -> ExportReport:
    """`prunekit export`: a prunekit model file (pruned, masked or low-rank: the edits replay) written as
    ONNX, checked on the first test batch of its dataset (`data`, a `pipeline.DataSpec`; what it leaves
    open comes from the file)."""
    from prunekit import model_file

    if fmt != "onnx":
        raise ConfigError(f"unknown export format {fmt!r}; valid formats: onnx")
    _require_onnx()  # before any data is read
    model = model_file.load(checkpoint, device="cpu")
    data = data.for_model(getattr(model, "prunekit_info", {}) or {}, checkpoint)
    _, test_loader, _ = data.loaders(torch.device("cpu"))
    inputs = next(iter(test_loader), None)
    if inputs is None:
        raise ConfigError(f"the test split of {data.name!r} is empty; no real inputs to check the export on")
    return export_onnx(model, inputs[0], out)


def profile_onnxruntime(
    model: nn.Module, shape: Sequence[int], batch_sizes: Sequence[int], threads: int, mode: str = "freeze"
) -> list[str]:
    """`prunekit profile --runtime onnxruntime`: the model exported to a temporary ONNX file and timed in
    onnxruntime beside the PyTorch deployed form, round by round so load hits both alike."""
    import tempfile

    from prunekit.measure.timing import LatencyStats, compare_latency, speedup

    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        probe_inputs = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
        export_onnx(model, probe_inputs, path)
        for b in batch_sizes:
            ort_samples: list[float] = []
            torch_samples: list[float] = []
            for _ in range(5):  # interleaved rounds
                ort_samples += onnx_latency(path, shape, batch_size=b, threads=threads, warmup=2, repeats=10)
                res = compare_latency(
                    {"m": model},
                    shape,
                    batch_size=b,
                    threads=threads,
                    mode=mode,
                    warmup=2,
                    repeats=10,
                    rounds=1,
                )["m"]
                torch_samples += list(res.samples)
            ort, pt = LatencyStats.of_samples(ort_samples), LatencyStats.of_samples(torch_samples)
            lines.append(
                f"batch {b}, {threads} thread(s): onnxruntime {ort}  PyTorch ({mode}) {pt}  "
                f"onnxruntime speed-up {speedup(pt, ort)}"
            )
    return lines
