"""What `prunekit run --resume` saves: a recipe run interrupted late and resumed, against one run straight.

A small DeepHoyer recipe (LeNet-5 on the packaged Fashion-MNIST subset, `--limit-train`: dense, regularised
and fine-tune stages of `--epochs` epochs each) is run three ways in this process, side by side:

- interrupted: the run stopped (a KeyboardInterrupt, as Ctrl-C) right after the last fine-tune
  epoch's checkpoint — all the training is done, only measuring and the reports are left;
- resumed: `prunekit run --resume --out` on the interrupted folder;
- straight: the whole recipe, no break (last, so that first-run costs fall on the interrupted run).

It prints each wall time, the resumed/straight ratio (what an interruption late in a long run now costs
instead of a restart: ratio 1.0) and checks that the resumed run ends with the straight run's weights and
byte-identical summary.json and report.md.

    python benchmarks/recipe_resume.py --epochs 4 --limit-train 1024
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from prunekit.cli import main
from prunekit.train import loop as train_loop

RECIPE = """\
name: resume_bench
model: {{arch: lenet5}}
data: {{dataset: fashion_mnist_mini, eval_batch_size: 500}}
dense: {{epochs: {e}, batch_size: 64, lr: 0.05, momentum: 0.9, weight_decay: 5.0e-4, seed: 1}}
method:
  name: deephoyer
  options: {{regularizer: hoyer_square, decay: 1.0e-4, threshold: std, sensitivity: 0.5}}
sparsify: {{epochs: {e}, batch_size: 64, lr: 0.01, momentum: 0.9, seed: 2}}
finetune: {{epochs: {e}, batch_size: 64, lr: 0.01, momentum: 0.9, seed: 3}}
published: {{top1: 0.0}}
"""


class Stop(KeyboardInterrupt):
    pass


def timed(argv: list[str], expect: int) -> float:
    start = time.perf_counter()
    code = main(argv)
    if code != expect:
        raise SystemExit(f"prunekit {' '.join(argv)} exited {code}, expected {expect}")
    return time.perf_counter() - start


def main_bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4, help="epochs of each stage")
    parser.add_argument("--limit-train", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="recipe_resume_"))
    recipe = work / "recipe.yaml"
    recipe.write_text(RECIPE.format(e=args.epochs))
    options = ["--limit-train", str(args.limit_train), "--limit-test", "500", "--device", "cpu"]
    options += ["--threads", str(args.threads)]

    broken = work / "broken"
    original = train_loop.append_record

    def stop_after_last_epoch(where, record):
        original(where, record)
        if Path(where) == broken / "pruned" and record["epoch"] == args.epochs:
            raise Stop

    train_loop.append_record = stop_after_last_epoch
    try:
        interrupted = timed(["run", str(recipe), "--out", str(broken), *options], 130)
    finally:
        train_loop.append_record = original
    resumed = timed(["run", "--resume", "--out", str(broken)], 0)
    # Straight last, so that the process's first-run costs (lazy imports, allocator warm-up) fall on the
    # interrupted run, not on either side of the ratio.
    straight = timed(["run", str(recipe), "--out", str(work / "straight"), *options], 0)

    a, b = (load_file(work / run / "pruned" / "model.safetensors") for run in ("straight", "broken"))
    same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    same_files = all(
        (work / "straight" / name).read_bytes() == (broken / name).read_bytes()
        for name in ("summary.json", "report.md")
    )
    print(f"recipe: 3 stages × {args.epochs} epochs, {args.limit_train} images, {args.threads} thread(s)")
    print(f"straight run                               {straight:7.1f} s")
    print(f"interrupted after the last fine-tune epoch {interrupted:7.1f} s")
    print(f"resumed                                    {resumed:7.1f} s")
    print(f"ratio resumed/straight: {resumed / straight:.2f} (a restart: 1.00)")
    print(f"same weights: {same}; summary.json and report.md byte-identical: {same_files}")


if __name__ == "__main__":
    main_bench()
