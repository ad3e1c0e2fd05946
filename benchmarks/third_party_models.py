"""prunekit and Torch-Pruning on third-party CNN definitions (timm's zoo), as a new user would try them.

Each model is built by timm with random weights and a 10-class head, then pruned by `prunekit.prune`
(L1 at ratio 0.3 and at `target_macs=0.5`; FPGM, random, HRank and Slimming at 0.3 on a subset) and by
Torch-Pruning's `MetaPruner` with L1 magnitude importance at 0.3 (classifier ignored, as its README does).
Every model runs in its own subprocess, one thread, each job under a timeout; a job ends as one of

  ok       pruned, and the oracle below agrees
  WRONG    pruned, but the pruned model is not the original with the same channels zeroed (silent breakage)
  refused  a prunekit error (`PrunekitError`): its message is recorded
  crash    any other exception (for prunekit, a bug: no call may end in one)
  timeout  the job ran past its limit
  unverified  pruned, but the oracle itself ran past its (3x longer) limit
  noop     nothing was removed

The oracle is independent of both tools: the weights are first replaced by distinct random values, so every
kept weight of the pruned model can be located in the original by value (which channels were kept is read
from the pruned weights, not from anybody's plan). The original is then masked (every weight that did not
survive set to zero), every bias, BatchNorm shift and running mean is zeroed in both models, and the two
must agree in float64 on the example input (relative 1e-6). Zeroed BatchNorm shifts and biases make a
removed channel equal a zeroed one through BN and any activation with f(0) = 0.

timm is not a prunekit dependency. This script needs timm's source (tested with timm 1.0.31, e.g. `pip
download timm==1.0.31 --no-deps` and unzip it) on PYTHONPATH. timm imports torchvision, which does not load
against this torch build: a stub (below, this script only) stands in for it; the models used here need only
`FrozenBatchNorm2d` (a class for isinstance checks) and `InterpolationMode` (an enum) from it.

    OMP_NUM_THREADS=1 PYTHONPATH=/path/to/timm .venv/bin/python benchmarks/third_party_models.py \
        --out third_party.md [--models resnet18,dla34] [--timeout 120] [--workers 1] [--jsonl records.jsonl]
    .venv/bin/python benchmarks/third_party_models.py --render run1.jsonl run2.jsonl --out table.md  # tables
"""

from __future__ import annotations

import argparse
import copy
import enum
import importlib.abc
import importlib.machinery
import json
import math
import os
import signal
import subprocess
import sys
import time
import traceback
import types
import warnings
from pathlib import Path

# (timm name, family); the smallest variant of each family. Methods beyond l1/tp run on FULL models.
MODELS: list[tuple[str, str]] = [
    ("resnet18", "resnet"),
    ("resnet18d", "resnet-d"),
    ("resnet26t", "resnet-t (tiered stem)"),
    ("resnetblur18", "resnet + blur pool"),
    ("resnetv2_50", "preact resnetv2"),
    ("resnext26ts", "resnext"),
    ("seresnext26d_32x4d", "se-resnext"),
    ("ecaresnet26t", "eca-resnet"),
    ("gcresnet33ts", "gc-resnet (global context)"),
    ("skresnet18", "sk-resnet (selective kernel)"),
    ("resnest14d", "resnest (split attention)"),
    ("res2net50_14w_8s", "res2net"),
    ("res2next50", "res2next"),
    ("regnetx_002", "regnetx"),
    ("regnety_002", "regnety"),
    ("regnetz_b16", "regnetz"),
    ("mobilenetv2_050", "mobilenetv2"),
    ("mobilenetv3_small_050", "mobilenetv3"),
    ("mobilenetv4_conv_small", "mobilenetv4"),
    ("mnasnet_small", "mnasnet"),
    ("semnasnet_050", "mnasnet + se"),
    ("spnasnet_100", "single-path nas"),
    ("fbnetc_100", "fbnet"),
    ("fbnetv3_b", "fbnetv3"),
    ("tinynet_e", "tinynet"),
    ("lcnet_035", "lcnet"),
    ("mixnet_s", "mixnet (mixed kernels)"),
    ("hardcorenas_a", "hardcorenas"),
    ("efficientnet_b0", "efficientnet"),
    ("efficientnetv2_rw_t", "efficientnetv2"),
    ("ghostnet_050", "ghostnet"),
    ("ghostnetv2_100", "ghostnetv2"),
    ("repghostnet_050", "repghostnet"),
    ("rexnet_100", "rexnet"),
    ("cspresnet50", "cspresnet"),
    ("cspdarknet53", "cspdarknet"),
    ("cs3darknet_s", "cs3darknet"),
    ("darknet17", "darknet"),
    ("densenet121", "densenet"),
    ("dla34", "dla"),
    ("dla46_c", "dla (small)"),
    ("dla60_res2net", "dla + res2net"),
    ("dpn48b", "dpn"),
    ("hrnet_w18_small", "hrnet"),
    ("inception_v3", "inception v3"),
    ("inception_v4", "inception v4"),
    ("inception_resnet_v2", "inception-resnet v2"),
    ("legacy_xception", "xception"),
    ("xception41", "xception (aligned)"),
    ("nasnetalarge", "nasnet"),
    ("pnasnet5large", "pnasnet"),
    ("repvgg_a0", "repvgg"),
    ("mobileone_s0", "mobileone"),
    ("vgg11_bn", "vgg"),
    ("ese_vovnet19b_dw", "ese-vovnet"),
    ("vovnet39a", "vovnet"),
    ("selecsls42b", "selecsls"),
    ("gernet_s", "gernet"),
    ("hgnetv2_b0", "hgnetv2"),
    ("tresnet_m", "tresnet (space-to-depth)"),
    ("nf_resnet26", "nf-resnet (scaled WS conv)"),
    ("legacy_seresnet18", "senet (legacy)"),
    ("convnext_atto", "convnext (LayerNorm)"),
    ("convmixer_768_32", "convmixer"),
    ("inception_next_atto", "inception-next"),
    ("repvit_m0_9", "repvit"),
    ("rdnet_tiny", "rdnet (dense, LayerNorm)"),
]
FULL = {
    "resnet18",
    "resnext26ts",
    "regnetx_002",
    "mobilenetv2_050",
    "mobilenetv3_small_050",
    "mixnet_s",
    "efficientnet_b0",
    "ghostnet_050",
    "rexnet_100",
    "cspdarknet53",
    "densenet121",
    "dla34",
    "dpn48b",
    "inception_v3",
    "res2net50_14w_8s",
    "resnetv2_50",
    "legacy_seresnet18",
    "convnext_atto",
    "inception_resnet_v2",
    "hrnet_w18_small",
    "tresnet_m",
    "cs3darknet_s",
    "resnetblur18",
}
JOBS = ("l1", "l1_macs", "fpgm", "random", "hrank", "slimming", "tp_l1")
SIZES = (64, 96, 128, 160, 224, 299, 331)


# --- torchvision stub
def install_torchvision_stub() -> None:
    """timm imports torchvision at module level; this torch build has none that loads. Every `torchvision.*`
    import gets a module whose unknown attributes are an inert placeholder class, plus the two real names
    the model code touches: `ops.misc.FrozenBatchNorm2d` and `transforms.InterpolationMode`."""
    import torch

    class _AnyMeta(type):
        def __getattr__(cls, name: str) -> type:
            if name.startswith("__"):
                raise AttributeError(name)
            return cls

    class _Placeholder(metaclass=_AnyMeta):
        def __init__(self, *args: object, **kwargs: object) -> None:
            raise RuntimeError("torchvision is stubbed in benchmarks/third_party_models.py")

    class _Module(types.ModuleType):
        def __getattr__(self, name: str) -> type:
            if name.startswith("__"):
                raise AttributeError(name)
            return _Placeholder

    class FrozenBatchNorm2d(torch.nn.Module):
        def __init__(self, num_features: int, eps: float = 1e-5) -> None:
            super().__init__()
            for n in ("weight", "bias", "running_mean", "running_var"):
                self.register_buffer(n, torch.ones(num_features))

    interpolation = enum.Enum(
        "InterpolationMode", "NEAREST NEAREST_EXACT BILINEAR BICUBIC BOX HAMMING LANCZOS"
    )

    class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, fullname, path, target=None):  # noqa: ANN001, ANN201
            if fullname == "torchvision" or fullname.startswith("torchvision."):
                return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
            return None

        def create_module(self, spec):  # noqa: ANN001, ANN201
            module = _Module(spec.name)
            module.__path__ = []
            return module

        def exec_module(self, module):  # noqa: ANN001, ANN201
            if module.__name__ == "torchvision.ops.misc":
                module.FrozenBatchNorm2d = FrozenBatchNorm2d
            if module.__name__ in ("torchvision.transforms", "torchvision.transforms.functional"):
                module.InterpolationMode = interpolation

    sys.meta_path.insert(0, _Finder())


# --- the oracle
def distinct_weights(model, seed: int = 0) -> None:  # noqa: ANN001
    """Every float tensor of 2+ dims gets distinct values (a random permutation of an evenly spaced grid, or
    of distinct float32 bit patterns beyond 4M elements, scaled like Kaiming-uniform to a power of two), so
    a kept weight can be found in the original by value. 1-D parameters
    (BN/LN scales, layer scales) and BN running variances get values in [0.5, 1.5]: no zero-initialised
    residual branch hides a channel from the oracle."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            if not t.is_floating_point():
                continue
            if t.dim() >= 2:
                n = t.numel()
                fan_in = max(1, n // t.shape[0])
                if n <= 1 << 22:  # an evenly spaced grid in (-1, 1) stays distinct in float32
                    values = (torch.randperm(n, generator=g).double() + 0.5) / n * 2 - 1
                else:  # larger tensors: distinct float32 bit patterns (mantissa, then exponent, then sign)
                    idx = torch.randperm(n, generator=g, dtype=torch.int32)
                    rest = idx >> 23
                    magnitude = (((126 - (rest >> 1)) << 23) | (idx & 0x7FFFFF)).view(torch.float32)
                    values = torch.where(rest & 1 == 1, -magnitude, magnitude)
                # a power of two keeps float32 values distinct (another factor can round two into one)
                t.copy_((values * 2.0 ** round(math.log2((3.0 / fan_in) ** 0.5))).view_as(t))
            elif t.dim() == 1:
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)


def neutralise(model) -> None:  # noqa: ANN001
    """Zero every bias, BN shift and running mean: a zeroed channel then stays zero through BN."""
    import torch

    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            leaf = name.rsplit(".", 1)[-1]
            if leaf in ("bias", "running_mean") and t.is_floating_point():
                t.zero_()


class OracleBlind(Exception):
    """The oracle cannot tell which weights were kept (the result is reported as unverified)."""


def oracle(original, pruned, x) -> str | None:  # noqa: ANN001
    """None when `pruned` equals `original` with the weights that did not survive zeroed; else the reason."""
    import torch

    sd_small = pruned.state_dict()
    masks = {}
    with torch.no_grad():
        for name, t in original.state_dict().items():
            s = sd_small.get(name)
            if s is None or s.shape == t.shape or not t.is_floating_point() or t.dim() < 2:
                continue
            srt, order = t.flatten().sort()
            if bool((srt[1:] == srt[:-1]).any()):
                raise OracleBlind(f"{name} has repeated values; kept weights cannot be located")
            pos = torch.searchsorted(srt, s.flatten()).clamp(max=len(srt) - 1)
            found = srt[pos] == s.flatten()
            if not bool(found.all()):
                return f"{name}: {int((~found).sum())} kept weights are not weights of the original"
            mask = torch.zeros(t.numel(), dtype=torch.bool)
            mask[order[pos]] = True
            masks[name] = mask.view_as(t)
        dense = copy.deepcopy(original).double().eval()
        small = copy.deepcopy(pruned).double().eval()
        sd_dense = dense.state_dict()
        for name, mask in masks.items():
            sd_dense[name].mul_(mask.to(torch.float64))
        neutralise(dense)
        neutralise(small)
        xd = x.double()
        a, b = dense(xd), small(xd)
        if not isinstance(a, torch.Tensor):
            return "the model's output is not a tensor"
        if a.shape != b.shape:
            return f"output shape {tuple(b.shape)} != {tuple(a.shape)}"
        err = float((a - b).abs().max())
        scale = float(a.abs().max())
        if not err <= 1e-6 * scale + 1e-12:
            return f"output differs from the masked original: max |diff| {err:.3g} vs max |out| {scale:.3g}"
        return None


# --- one model
class Timeout(BaseException):  # not an Exception: no `except Exception` in the code under test swallows it
    pass


def _alarm(signum, frame):  # noqa: ANN001, ANN202
    raise Timeout()


def where(exc: BaseException) -> str:
    """The innermost frame of a traceback, as file:line (function), shortened to the package path."""
    tb = traceback.extract_tb(exc.__traceback__)
    if not tb:
        return "?"
    f = tb[-1]
    path = f.filename
    for root in ("site-packages/", "src/", "timmenv/"):
        if root in path:
            path = path.split(root, 1)[1]
    return f"{path}:{f.lineno} ({f.name})"


def run_model(name: str, jobs: list[str], timeout: int) -> None:
    """Worker: build `name`, run the jobs, print one JSON line per job (read by the parent)."""
    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    install_torchvision_stub()
    import timm
    import torch_pruning as tp

    import prunekit
    from prunekit.errors import PrunekitError
    from prunekit.measure import cost

    def emit(**record: object) -> None:
        print("RESULT " + json.dumps({"model": name, **record}), flush=True)

    torch.manual_seed(0)
    try:
        model = timm.create_model(name, pretrained=False, num_classes=10).eval()
    except Exception as exc:
        emit(job="build", outcome="build-error", message=f"{type(exc).__name__}: {exc}"[:300])
        return
    distinct_weights(model)
    x = None
    for size in SIZES:
        try:
            with torch.no_grad():
                model(torch.randn(2, 3, size, size))
            x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
            break
        except Exception:
            continue
    if x is None:
        emit(job="build", outcome="build-error", message="no input size up to 331 runs")
        return
    dense = cost(model, tuple(x.shape[1:]))
    params = sum(p.numel() for p in model.parameters())
    emit(job="build", outcome="ok", size=x.shape[-1], macs=dense.macs, params=params)

    signal.signal(signal.SIGALRM, _alarm)
    for job in jobs:
        t0 = time.perf_counter()
        record: dict[str, object] = {"job": job}
        checking = False  # past the tool's call: a failure now means it returned a broken model
        checked = False
        signal.alarm(timeout)
        try:
            if job == "tp_l1":
                pruned = copy.deepcopy(model)
                classifier = pruned.get_classifier()
                ignored = [classifier] if isinstance(classifier, torch.nn.Module) else []
                pruner = tp.pruner.MetaPruner(
                    pruned,
                    x.expand(2, *x.shape[1:]),  # torch's CPU conv records a squeeze at batch one
                    importance=tp.importance.MagnitudeImportance(p=1),
                    pruning_ratio=0.3,
                    ignored_layers=ignored,
                )
                pruner.step()
            else:
                method = "l1" if job == "l1_macs" else job
                kw = {"target_macs": 0.5} if job == "l1_macs" else {"ratio": 0.3}
                pruned = prunekit.prune(model, x, method, **kw)
            record["time_s"] = round(time.perf_counter() - t0, 2)
            signal.alarm(0)
            checking = True
            after = cost(pruned, tuple(x.shape[1:]))
            record["macs_ratio"] = round(after.macs / dense.macs, 4)
            record["params_ratio"] = round(sum(p.numel() for p in pruned.parameters()) / params, 4)
            checked = True  # from here a Timeout is the oracle's, not the tool's
            signal.alarm(3 * timeout)
            problem = oracle(model, pruned, x)
            signal.alarm(0)
            if problem is not None:
                record.update(outcome="WRONG", message=problem)
            elif record["params_ratio"] == 1.0:
                record.update(outcome="noop", message="nothing removed")
            else:
                record.update(outcome="ok")
        except Timeout:
            if checked:
                record.update(outcome="unverified", message=f"the oracle ran over {3 * timeout} s")
            else:
                record.update(outcome="timeout", message=f"over {timeout} s")
        except OracleBlind as exc:
            signal.alarm(0)
            record.update(outcome="unverified", message=str(exc))
        except PrunekitError as exc:
            signal.alarm(0)
            record.update(outcome="refused", message=f"{type(exc).__name__}: {exc}"[:1500])
        except Exception as exc:  # anything else is what the sweep is looking for
            signal.alarm(0)
            prefix = "the pruned model does not run: " if checking else ""
            record.update(
                outcome="WRONG" if checking else "crash",
                where=where(exc),
                message=f"{prefix}{type(exc).__name__}: {exc}"[:600],
            )
        finally:
            signal.alarm(0)
        record.setdefault("time_s", round(time.perf_counter() - t0, 2))
        emit(**record)


# --- the sweep
def sweep_one(name: str, jobs: list[str], timeout: int) -> list[dict]:
    cmd = [sys.executable, __file__, "--worker", name, "--jobs", ",".join(jobs), "--timeout", str(timeout)]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    budget = timeout * (4 * len(jobs) + 1) + 60
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=budget)
        out, err = proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = "worker timed out"
    records = [json.loads(line[7:]) for line in out.splitlines() if line.startswith("RESULT ")]
    done = {r["job"] for r in records}
    for job in ["build", *jobs]:
        if job not in done and not any(r["job"] == "build" and r["outcome"] != "ok" for r in records):
            tail = err.strip().splitlines()[-1:] if err.strip() else ["no output"]
            records.append(
                {
                    "model": name,
                    "job": job,
                    "outcome": "timeout" if "timed out" in err else "crash",
                    "message": ("worker died: " + tail[0])[:300],
                }
            )
    return records


def cell(r: dict | None) -> str:
    if r is None:
        return ""
    o = r["outcome"]
    if o == "ok":
        return f"ok {r['macs_ratio']:.2f} ({r['time_s']:.1f}s)"
    return f"{o} ({r.get('time_s', 0):.1f}s)" if o in ("timeout",) else o


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker")
    ap.add_argument("--jobs")
    ap.add_argument("--models", help="comma-separated timm names (default: all)")
    ap.add_argument("--timeout", type=int, default=120)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--out", default="third_party_models.md")
    ap.add_argument("--jsonl", help="append every record here as it arrives")
    ap.add_argument(
        "--render",
        nargs="+",
        metavar="JSONL",
        help="only write the tables from earlier --jsonl files (a later record of a model/job wins)",
    )
    args = ap.parse_args()
    if args.worker:
        run_model(args.worker, args.jobs.split(","), args.timeout)
        return

    families = dict(MODELS)
    names = args.models.split(",") if args.models else [n for n, _ in MODELS]
    from concurrent.futures import ThreadPoolExecutor

    def jobs_for(n: str) -> list[str]:
        return list(JOBS) if n in FULL else ["l1", "l1_macs", "tp_l1"]

    results: dict[str, list[dict]] = {}
    t0 = time.time()
    if args.render:
        latest: dict[tuple[str, str], dict] = {}
        for path in args.render:
            for line in Path(path).read_text().splitlines():
                r = json.loads(line)
                latest[r["model"], r["job"]] = r
        for (n, _), r in latest.items():
            results.setdefault(n, []).append(r)
        names = [n for n in names if n in results]
    with ThreadPoolExecutor(args.workers) as pool:
        futures = {n: pool.submit(sweep_one, n, jobs_for(n), args.timeout) for n in names if n not in results}
        for n in futures:
            results[n] = futures[n].result()
            build = next(r for r in results[n] if r["job"] == "build")
            line = " ".join(f"{r['job']}={r['outcome']}" for r in results[n] if r["job"] != "build")
            print(f"[{time.time() - t0:6.0f}s] {n:24s} {build['outcome']:6s} {line}", flush=True)
            if args.jsonl:
                with open(args.jsonl, "a") as f:
                    for r in results[n]:
                        f.write(json.dumps(r) + "\n")

    rows = [
        "| model | family | input | dense MACs | " + " | ".join(JOBS) + " |",
        "|---|---|---|---|" + "---|" * len(JOBS),
    ]
    problems = []
    for n in names:
        by_job = {r["job"]: r for r in results[n]}
        b = by_job["build"]
        if b["outcome"] != "ok":
            rows.append(f"| {n} | {families.get(n, '')} | build error: {b.get('message', '')[:80]} |")
            continue
        rows.append(
            f"| {n} | {families.get(n, '')} | {b['size']} | {b['macs'] / 1e6:.1f}M | "
            + " | ".join(cell(by_job.get(j)) for j in JOBS)
            + " |"
        )
        for j in JOBS:
            r = by_job.get(j)
            if r is not None and r["outcome"] not in ("ok",):
                problems.append(
                    f"- `{n}` {j}: **{r['outcome']}** — {r.get('message', '')} {r.get('where', '')}"
                )

    counts = {}
    for j in JOBS:
        rs = [next((r for r in results[n] if r["job"] == j), None) for n in names]
        rs = [r for r in rs if r is not None]
        c: dict[str, int] = {}
        for r in rs:
            c[r["outcome"]] = c.get(r["outcome"], 0) + 1
        counts[j] = c
    kinds = ("ok", "WRONG", "refused", "crash", "timeout", "unverified", "noop")
    summary = ["| job | models | " + " | ".join(kinds) + " |", "|---|---|" + "---|" * len(kinds)]
    for j, c in counts.items():
        summary.append(f"| {j} | {sum(c.values())} | " + " | ".join(str(c.get(k, 0)) for k in kinds) + " |")
    text = "\n".join(
        [
            "## Outcomes",
            "",
            *summary,
            "",
            "## Per model (ok: MACs after / before, wall time)",
            "",
            *rows,
            "",
            "## Everything that is not ok",
            "",
            *problems,
            "",
        ]
    )
    print(text)
    Path(args.out).write_text(text)
    print(f"wrote {args.out} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
