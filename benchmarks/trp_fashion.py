"""TRP vs the nuclear-norm baseline vs plain training, decomposed NC and VH, on real Fashion-MNIST (CPU).

ResNet-20 option B (1×1-conv shortcuts, bearpaw's variant used by TRP) with one input channel trains from
one initialisation three ways for the same number of steps (SGD, momentum 0.9, wd 1e-4, cosine): plain
(dense), ``nuclear`` (λ·U_r V_rᵀ every step) and ``trp`` (projection every step + the same sub-gradient),
the last two once per scheme (the projection is scheme-specific). Then, per scheme:

- ``trp``: the release's final rule, singular values ≥ 0.05 (the paper's "no fine-tuning needed" row);
- ``nuclear`` and the plainly trained net (the paper's Zhang / Jaderberg baselines) decomposed to the same
  MACs as the TRP net, by a budget search on the discarded-energy share (``rule=energy``);

each reported without retraining and after a short retrain (SGD lr 0.01, constant), with conv+linear MACs,
params and the measured latency of the deployed (BN-folded, frozen) model at batch 1 and 64, one thread,
interleaved with the dense model; ratios are against the dense model.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/trp_fashion.py --json /tmp/trp.json   # ~10 CPU minutes
"""

from __future__ import annotations

import argparse
import copy
import json
import warnings
from pathlib import Path
from typing import Any

import torch

import prunekit
from prunekit.data import build_loaders
from prunekit.measure import cost
from prunekit.measure.conventions import trp_flops
from prunekit.measure.timing import compare_latency
from prunekit.methods import create_method
from prunekit.models import create
from prunekit.pipeline import calibration_batch
from prunekit.train import TrainConfig, evaluate, fit

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (1, 28, 28)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--train", type=int, default=3000, help="training images (first n)")
    p.add_argument("--test", type=int, default=2000, help="test images (first n)")
    p.add_argument("--epochs", type=int, default=2, help="epochs of each training run")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--retrain", type=int, default=1000, help="images of the one-epoch retrain")
    p.add_argument("--schemes", default="NC,VH")
    p.add_argument("--repeats", type=int, default=40, help="timed forwards per model and batch size")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    device = torch.device(args.device)
    loaders = {
        n: build_loaders(
            "fashion_mnist",
            args.batch_size,
            device=device,
            root=args.data_root,
            download=False,
            limit_train=n,
            limit_test=args.test,
            eval_batch_size=1000,
        )  # fmt: skip
        for n in {args.train, args.retrain}
    }
    train, test, _ = loaders[args.train]
    retrain = loaders[args.retrain][0]
    calib = calibration_batch(train, 8).to("cpu")
    torch.manual_seed(0)
    init = create("resnet20", num_classes=10, in_channels=1, shortcut="B")
    cfg = TrainConfig(epochs=args.epochs, lr=0.1, momentum=0.9, weight_decay=1e-4, schedule="cosine", seed=0)

    # One untimed step first, so the first timed run does not pay for allocator and kernel warm-up.
    warm = build_loaders("fashion_mnist", args.batch_size, device=device, root=args.data_root, download=False,
                         limit_train=args.batch_size, limit_test=args.batch_size)  # fmt: skip
    fit(copy.deepcopy(init), warm[0], warm[1], TrainConfig(epochs=1, seed=0), device=device, progress=False)
    trained: dict[str, torch.nn.Module] = {}
    rows: dict[str, dict[str, Any]] = {}
    for run in ["dense", *(f"{m}-{s}" for s in args.schemes.split(",") for m in ("nuclear", "trp"))]:
        model = copy.deepcopy(init)
        hooks = [] if run == "dense" else [create_method(run.split("-")[0], scheme=run.split("-")[1])]
        result = fit(model, train, test, cfg, hooks=hooks, device=device, progress=False)
        trained[run] = model.to("cpu").eval()
        rows[run] = {"train_s": result.wall_time_s, "trained_top1": result.final_top1}
        print(f"{run}: trained top-1 {result.final_top1:.2f} % in {result.wall_time_s:.0f} s", flush=True)

    dense = trained["dense"]
    models: dict[str, torch.nn.Module] = {"dense": dense}
    for scheme in args.schemes.split(","):
        trp = prunekit.prune(trained[f"trp-{scheme}"], calib[:1], method="trp", calib=calib, scheme=scheme)
        fraction = cost(trp, SHAPE).macs / cost(dense, SHAPE).macs
        models[f"trp-{scheme}"] = trp
        if fraction >= 0.99:  # too short a run: the value rule kept (nearly) every rank
            print(f"trp-{scheme} decomposed to {fraction:.3f} of the dense MACs: no equal-MAC baselines")
            continue
        for source, name in ((f"nuclear-{scheme}", f"nuclear-{scheme}"), ("dense", f"energy-{scheme}")):
            models[name] = prunekit.prune(
                trained[source], calib[:1], method="trp", calib=calib, scheme=scheme, rule="energy",
                target_macs=fraction,
            )  # fmt: skip
    dense_cost = cost(dense, SHAPE)
    for name, model in models.items():
        row = rows.setdefault(name, {})
        c = cost(model, SHAPE)
        row.update(
            macs=c.macs, params=c.params, trp_flops=trp_flops(model, SHAPE),
            mac_speedup=dense_cost.macs / c.macs, top1=evaluate(model, test, device=device)["top1"],
        )  # fmt: skip
        if name != "dense":
            tuned = copy.deepcopy(model)
            rcfg = TrainConfig(
                epochs=1, lr=0.01, momentum=0.9, weight_decay=1e-4, schedule="constant", seed=0
            )
            row["retrained_top1"] = fit(tuned, retrain, test, rcfg, device=device, progress=False).final_top1
        print(
            name,
            json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}),
            flush=True,
        )
    for batch in (1, 64):
        timed = compare_latency(models, SHAPE, batch_size=batch, threads=1, repeats=args.repeats, rounds=5)
        for name, t in timed.items():
            rows[name][f"ms_b{batch}"] = t.median_ms
            rows[name][f"spread_b{batch}"] = t.spread_ms
    for name in models:
        for batch in (1, 64):
            rows[name][f"lat_speedup_b{batch}"] = rows["dense"][f"ms_b{batch}"] / rows[name][f"ms_b{batch}"]

    print(f"\nResNet-20-B / Fashion-MNIST: {args.epochs} epochs on {args.train} images per training run, "
          f"test {args.test}, retrain 1 epoch on {args.retrain} images; "
          "latency 1 thread, deployed (BN folded)")  # fmt: skip
    print("| model | MACs | MAC × | params | top-1 no retrain | top-1 retrained | ms b1 | × b1 | ms b64 "
          "| × b64 |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in models:
        r = rows[name]
        retrained = "–" if r.get("retrained_top1") is None else f"{r['retrained_top1']:.2f}"
        print(
            f"| {name} | {r['macs'] / 1e6:.2f}M | {r['mac_speedup']:.2f} | {r['params'] / 1e3:.1f}k | "
            f"{r['top1']:.2f} | {retrained} | {r['ms_b1']:.3f} | {r['lat_speedup_b1']:.2f} | "
            f"{r['ms_b64']:.2f} | {r['lat_speedup_b64']:.2f} |"
        )
    for scheme in args.schemes.split(","):
        ranks = models[f"trp-{scheme}"]
        print(f"trp-{scheme} ranks:", {n: m.rank for n, m in ranks.named_modules() if hasattr(m, "rank")})
    print(
        "training time vs dense:",
        {k: round(v["train_s"] / rows["dense"]["train_s"], 2) for k, v in rows.items() if "train_s" in v},
    )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
