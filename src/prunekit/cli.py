"""`prunekit ...`: the command line. Each subcommand is a thin layer over the Python API.

Errors a user can cause (PrunekitError) are printed as one line without a traceback, exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from prunekit.errors import ConfigError, PrunekitError

EXAMPLES_TRAIN = """examples:
  prunekit train --arch resnet56 --data cifar10 --epochs 164 --out runs/r56
  prunekit train --arch lenet5 --data mnist --data-root ../shared/data --epochs 10 --lr 0.01 --out runs/lenet5
  prunekit train --config my_run.yaml --out runs/x            # YAML keys = the long option names
  torchrun --nproc-per-node=2 -m prunekit train --arch resnet20 --data cifar10 --out runs/r20-ddp
"""


EXAMPLES_PRUNE = """examples:
  prunekit prune runs/r56/model.safetensors --method l1 --ratio 0.5 --finetune-epochs 30 --out runs/r56-l1
  prunekit prune runs/r56/model.safetensors --method fpgm --target-macs 0.5 --finetune-epochs 30 \\
      --out runs/r56-fpgm
  prunekit prune runs/r56/model.safetensors --method slimming --ratio 0.4 --sparsify-epochs 20 \\
      --finetune-epochs 30 --out runs/r56-slim
  prunekit prune runs/r56/model.safetensors --method l1 --ratios "*layer1*:0.6,*layer3*:0.3" --out runs/x
"""


def _csv_ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(t) for t in text.lower().replace("x", ",").split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a shape like 3x32x32, got {text!r}") from None
    if len(dims) != 3 or min(dims) <= 0:
        raise argparse.ArgumentTypeError(f"expected C x H x W with positive sizes, got {text!r}")
    return dims


def _add_data_args(p: argparse.ArgumentParser, *, default: str | None = None) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", default=default, help="dataset name (see `prunekit train --list`)")
    g.add_argument(
        "--data-root", help="folder with the datasets (default: $PRUNEKIT_DATA or ~/.cache/prunekit/data)"
    )
    g.add_argument("--no-download", action="store_true", help="never download; fail if files are missing")
    g.add_argument("--batch-size", type=int, default=128)
    g.add_argument("--eval-batch-size", type=int)
    g.add_argument("--limit-train", type=int, help="use only the first N training images (quick runs)")
    g.add_argument("--limit-test", type=int, help="use only the first N test images")
    g.add_argument(
        "--no-normalize",
        action="store_true",
        help="feed pixels in [0, 1] without mean/std normalisation (as ToTensor()-only scripts)",
    )
    g.add_argument(
        "--data-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dataset keyword, repeatable; e.g. for synthetic: shape=1x28x28 num_samples=2048",
    )


def _add_train_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=10)
    g.add_argument("--optimizer", default="sgd", help="sgd | adam")
    g.add_argument("--lr", type=float, default=0.1)
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--nesterov", action="store_true")
    g.add_argument("--weight-decay", type=float, default=5e-4)
    g.add_argument("--schedule", default="cosine", help="multistep | cosine | piecewise | constant")
    g.add_argument("--milestones", type=_csv_ints, default=(), help="multistep epochs, e.g. 50,100")
    g.add_argument("--gamma", type=float, default=0.1)
    g.add_argument("--piecewise", help='lr from each epoch on, e.g. "0:0.01,60:0.001,90:0.0001"')
    g.add_argument("--warmup-epochs", type=float, default=0)
    g.add_argument("--label-smoothing", type=float, default=0.0)
    g.add_argument("--teacher", help="model.safetensors of a teacher for knowledge distillation")
    g.add_argument("--kd-temperature", type=float, default=4.0)
    g.add_argument("--kd-alpha", type=float, default=0.9)
    g.add_argument("--amp", default="auto", help="auto (bf16 on CUDA) | bf16 | off")
    g.add_argument("--channels-last", default="auto", help="auto (on CUDA) | on | off")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")


TRAIN_KEYS = (
    "epochs",
    "optimizer",
    "lr",
    "momentum",
    "nesterov",
    "weight_decay",
    "schedule",
    "milestones",
    "gamma",
    "piecewise",
    "warmup_epochs",
    "label_smoothing",
    "kd_temperature",
    "kd_alpha",
    "amp",
    "channels_last",
    "compile",
    "seed",
    "batch_size",
)


def _apply_yaml_config(
    parser: argparse.ArgumentParser, args: argparse.Namespace, argv: Sequence[str]
) -> None:
    """Fill options from `--config FILE` where the command line did not set them."""
    if not getattr(args, "config", None):
        return
    path = Path(args.config)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of option: value")
    given = {a.split("=")[0].lstrip("-").replace("-", "_") for a in argv if a.startswith("--")}
    valid = {a.dest for a in parser._actions if a.dest not in ("help", "config", "list")}
    for key, value in data.items():
        dest = str(key).replace("-", "_")
        if dest not in valid:
            raise ConfigError(f"{path}: unknown option {key!r}; valid options: {', '.join(sorted(valid))}")
        if dest not in given:
            setattr(args, dest, tuple(value) if isinstance(value, list) else value)


def _data_options(items: Sequence[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--data-option expects KEY=VALUE, got {item!r}")
        if "x" in text and all(t.isdigit() for t in text.split("x")):
            options[key.strip()] = tuple(int(t) for t in text.split("x"))
        else:
            options[key.strip()] = yaml.safe_load(text)
    return options


def _data_spec(args: argparse.Namespace) -> Any:
    from prunekit.pipeline import DataSpec

    if not args.data:
        raise ConfigError("--data is required (e.g. --data cifar10)")
    return DataSpec(
        name=args.data,
        root=args.data_root,
        download=not args.no_download,
        batch_size=args.batch_size,
        eval_batch_size=args.eval_batch_size,
        limit_train=args.limit_train,
        limit_test=args.limit_test,
        seed=getattr(args, "seed", 0),
        normalize=not args.no_normalize,
        options=_data_options(args.data_option),
    )


def _train_config(args: argparse.Namespace) -> Any:
    from prunekit.train import TrainConfig

    values = {k: getattr(args, k) for k in TRAIN_KEYS if hasattr(args, k)}
    values["milestones"] = list(values.get("milestones") or ())
    return TrainConfig.from_dict(values)


def cmd_train(args: argparse.Namespace) -> int:
    from prunekit.pipeline import train_run

    if args.list:
        from prunekit.data import list_datasets
        from prunekit.models import list_models

        print("models:  ", ", ".join(list_models()))
        print("datasets:", ", ".join(list_datasets()))
        return 0
    if not args.arch:
        raise ConfigError("--arch is required (e.g. --arch resnet56; `prunekit train --list` shows all)")
    cfg = _train_config(args)
    record = {
        "command": "train",
        "arch": args.arch,
        "shortcut": args.shortcut,
        "data": vars(_data_spec(args)),
        "train": cfg.to_dict(),
        "teacher": args.teacher,
        "device": args.device,
    }
    summary = train_run(
        args.arch,
        _data_spec(args),
        cfg,
        args.out,
        model_kwargs={"shortcut": args.shortcut} if args.shortcut else None,
        resume=args.resume,
        device=args.device,
        teacher_path=args.teacher,
        latency_batches=args.latency_batches,
        config_record=record,
    )
    if summary:
        print(
            f"top-1 {summary['top1']:.2f} %  params {summary['params']:,}  "
            f"MACs {summary['macs'] / 1e6:.2f}M  "
            f"→ {args.out}"
        )
    return 0


def _method_options(items: Sequence[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--option expects KEY=VALUE, got {item!r}")
        options[key.strip().replace("-", "_")] = text
    return options


def _optional_data_spec(args: argparse.Namespace) -> Any:
    return _data_spec(args) if args.data else None


def _stage_config(args: argparse.Namespace, prefix: str) -> Any:
    """The fine-tune or sparsify TrainConfig: shared optimisation options, that stage's epochs and lr."""
    from prunekit.train import TrainConfig

    values = {k: getattr(args, k) for k in TRAIN_KEYS if hasattr(args, k)}
    values["milestones"] = list(values.get("milestones") or ())
    values["epochs"] = getattr(args, f"{prefix}_epochs")
    lr = getattr(args, f"{prefix}_lr", None)
    if lr is not None:
        values["lr"] = lr
    return TrainConfig.from_dict(values)


def cmd_prune(args: argparse.Namespace) -> int:
    from prunekit.pipeline import PruneSpec, prune_run

    spec = PruneSpec(
        method=args.method,
        options=_method_options(args.option),
        ratio=args.ratio,
        ratios=args.ratios,
        target_macs=args.target_macs,
        speedup=args.speedup,
        calib_images=args.calib_images,
    )
    sparsify = _stage_config(args, "sparsify") if args.sparsify_epochs else None
    finetune = _stage_config(args, "finetune") if args.finetune_epochs else None
    record = {
        "command": "prune",
        "checkpoint": args.checkpoint,
        "prune": vars(spec),
        "data": vars(_optional_data_spec(args) or {}) if args.data else None,
        "sparsify": sparsify.to_dict() if sparsify else None,
        "finetune": finetune.to_dict() if finetune else None,
    }
    summary = prune_run(
        args.checkpoint,
        spec,
        _optional_data_spec(args),
        args.out,
        sparsify=sparsify,
        finetune=finetune,
        device=args.device,
        latency_batches=args.latency_batches,
        config_record=record,
    )
    d, p = summary["dense"], summary["pruned"]
    print(f"dense  top-1 {d['top1']:.2f} %  MACs {d['macs'] / 1e6:.2f}M  params {d['params']:,}")
    print(
        f"pruned top-1 {p['top1']:.2f} % ({p['top1_before_finetune']:.2f} % before fine-tuning)  "
        f"MACs {p['macs'] / 1e6:.2f}M ({summary['mac_speedup']:.2f}× fewer)  "
        f"params {p['params']:,}  → {args.out}"
    )
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from prunekit.pipeline import finetune_run

    cfg = _train_config(args)
    record = {"command": "finetune", "checkpoint": args.checkpoint, "train": cfg.to_dict()}
    summary = finetune_run(
        args.checkpoint,
        _optional_data_spec(args),
        cfg,
        args.out,
        resume=args.resume,
        device=args.device,
        latency_batches=args.latency_batches,
        config_record=record,
    )
    print(
        f"top-1 {summary['top1']:.2f} %  params {summary['params']:,}  "
        f"MACs {summary['macs'] / 1e6:.2f}M  → {args.out}"
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from prunekit.recipes import load_recipe, run_recipe

    recipe = load_recipe(args.recipe)
    summary = run_recipe(
        recipe,
        args.out or f"runs/{recipe.name}",
        dense_checkpoint=args.dense,
        data_root=args.data_root,
        epochs_scale=args.epochs_scale,
        limit_train=args.limit_train,
        limit_test=args.limit_test,
        download=not args.no_download,
        device=args.device,
    )
    ours, pub = summary["ours"], summary["published"]
    print(
        f"{recipe.name}: top-1 {ours['top1']:.2f} % (published {pub.get('top1', '–')}), "
        f"MACs {ours['macs'] / 1e6:.2f}M ({ours['mac_speedup']:.2f}× fewer), params {ours['params']:,}"
        + ("  [shortened run]" if summary["shortened"] else "")
    )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from rich.console import Console

    from prunekit.report import (
        RunFolder,
        comparison_markdown,
        comparison_table,
        plot_accuracy_vs_macs,
        rows_of,
    )

    rows = rows_of(args.runs)
    Console(width=160).print(comparison_table(rows, title="prunekit report (first run = reference)"))
    if args.out:
        out = RunFolder(args.out)
        plot = plot_accuracy_vs_macs(
            [(r.name, r.macs, r.top1 or 0.0) for r in rows], out.file("accuracy_vs_macs.png")
        )
        out.write_text(
            "report.md",
            "# Comparison\n\n" + comparison_markdown(rows) + f"\n![accuracy vs MACs]({plot.name})\n",
        )
        print(f"wrote {out.path}/report.md and {plot.name}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from prunekit.pipeline import evaluate_checkpoint

    metrics = evaluate_checkpoint(args.checkpoint, _data_spec(args), device=args.device)
    print(
        f"top-1 {metrics['top1']:.2f} %  top-5 {metrics['top5']:.2f} %  loss {metrics['loss']:.4f}  "
        f"({metrics['samples']} images)"
    )
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from rich.console import Console

    from prunekit.measure import cost, latency
    from prunekit.pipeline import load_for_profile

    model, shape = load_for_profile(args.target, args.input_shape)
    c = cost(model, shape)
    console = Console()
    if args.layers:
        console.print(c.table())
    console.print(
        f"{args.target}: input {'x'.join(map(str, shape))}  params {c.params:,}  MACs {c.macs:,} "
        f"({c.macs / 1e6:.2f}M)  BN params {c.bn_params:,}"
    )
    console.print(f"[dim]{c.convention}[/dim]")
    for b in args.batch_sizes:
        res = latency(model, shape, batch_size=b, threads=args.threads, mode=args.mode)
        console.print(f"latency {res}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from prunekit.demo import run_demo

    run_demo(out=Path(args.out), epochs=args.epochs, finetune_epochs=args.finetune_epochs, seed=args.seed)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from prunekit import __version__

    parser = argparse.ArgumentParser(
        prog="prunekit",
        description="Make trained CNNs physically smaller and faster, and prove it.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `prunekit COMMAND --help` for the options of each command.",
    )
    parser.add_argument("--version", action="version", version=f"prunekit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    fmt = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser(
        "train", help="train a zoo model into a run folder", epilog=EXAMPLES_TRAIN, formatter_class=fmt
    )
    p.add_argument("--arch", help="zoo architecture, e.g. resnet56 (see --list)")
    p.add_argument("--shortcut", choices=["A", "B"], help="CIFAR ResNet shortcut option (default A)")
    p.add_argument("--out", default="runs/train", help="run folder to write (default runs/train)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--config", help="YAML file of option: value (command-line options win)")
    p.add_argument("--latency-batches", type=_csv_ints, default=(1,), help="batch sizes to time, e.g. 1,64")
    p.add_argument("--list", action="store_true", help="list models and datasets, then exit")
    _add_data_args(p)
    _add_train_args(p)
    p.set_defaults(func=cmd_train, config_parser=p)

    p = sub.add_parser(
        "prune",
        help="prune a model file with a method, fine-tune, and compare with the dense model",
        formatter_class=fmt,
        epilog=EXAMPLES_PRUNE,
    )
    p.add_argument("checkpoint", help="model.safetensors written by prunekit (e.g. by `prunekit train`)")
    p.add_argument("--method", required=True, help="pruning method (l1, fpgm, slimming, random, ...)")
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="method option, repeatable (e.g. --option seed=3; lists as 1,5,8); an unknown KEY lists the "
        "method's options",
    )
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--ratio", type=float, help="remove this fraction of every prunable layer")
    sel.add_argument("--ratios", help='per-layer selection: "conv*:0.5,fc1:0.3" or "[0.1]+[0.6]*35+[0.0]*2"')
    sel.add_argument("--target-macs", type=float, help="keep this fraction of the dense MACs (searched)")
    sel.add_argument("--speedup", type=float, help="MAC speed-up to reach (= 1 / target-macs)")
    p.add_argument(
        "--calib-images", type=int, default=128, help="training images given to data-driven criteria"
    )
    p.add_argument("--sparsify-epochs", type=int, default=0, help="regularised training before pruning")
    p.add_argument("--sparsify-lr", type=float, help="lr of the sparsify stage (default: --lr)")
    p.add_argument("--finetune-epochs", type=int, default=0, help="fine-tuning epochs after pruning")
    p.add_argument("--finetune-lr", type=float, help="lr of the fine-tune stage (default: --lr)")
    p.add_argument("--out", default="runs/prune")
    p.add_argument("--latency-batches", type=_csv_ints, default=(1,))
    _add_data_args(p)
    _add_train_args(p)
    p.set_defaults(func=cmd_prune, lr=0.01)

    p = sub.add_parser(
        "finetune",
        help="fine-tune a (pruned) model file; stored masks stay exactly zero",
        formatter_class=fmt,
        epilog="example:\n  prunekit finetune runs/p/model.safetensors --epochs 30 --lr 0.01 --out runs/ft\n",
    )
    p.add_argument("checkpoint")
    p.add_argument("--out", default="runs/finetune")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--latency-batches", type=_csv_ints, default=(1,))
    _add_data_args(p)
    _add_train_args(p)
    p.set_defaults(func=cmd_finetune, lr=0.01)

    p = sub.add_parser(
        "run",
        help="run a recipe (a paper's table row) end to end",
        formatter_class=fmt,
        epilog="examples:\n  prunekit run recipes/deephoyer/lenet5_hs_mnist.yaml --data-root ../shared/data\n"
        "  prunekit run recipes/hrank/resnet56_cifar10_93.17.yaml --dense runs/r56/model.safetensors\n"
        "  prunekit run recipes/deephoyer/lenet5_hs_mnist.yaml --epochs-scale 0.02 --limit-train 5000\n",
    )
    p.add_argument("recipe", help="a recipe YAML file (see recipes/)")
    p.add_argument("--out", help="run folder (default runs/<recipe name>)")
    p.add_argument("--dense", help="start from this model file instead of training the recipe's baseline")
    p.add_argument("--data-root")
    p.add_argument("--no-download", action="store_true")
    p.add_argument("--epochs-scale", type=float, default=1.0, help="shorten every schedule (smoke runs)")
    p.add_argument("--limit-train", type=int)
    p.add_argument("--limit-test", type=int)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "report",
        help="compare run folders in one table and an accuracy-vs-MACs plot",
        formatter_class=fmt,
        epilog="example:\n  prunekit report runs/r56 runs/r56-l1 runs/r56-fpgm --out runs/compare\n",
    )
    p.add_argument(
        "runs",
        nargs="+",
        help="run folders (train, prune, finetune or recipe runs); the first is the reference",
    )
    p.add_argument("--out", help="write report.md and accuracy_vs_macs.png here")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "eval",
        help="evaluate a model file on a dataset's test split",
        formatter_class=fmt,
        epilog="example:\n  prunekit eval runs/r56/model.safetensors --data cifar10\n",
    )
    p.add_argument("checkpoint", help="model.safetensors written by prunekit")
    p.add_argument("--device", default="auto")
    _add_data_args(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "profile",
        help="params, MACs (per layer) and deployed latency of a model",
        formatter_class=fmt,
        epilog="examples:\n  prunekit profile resnet56 --batch-sizes 1,64\n"
        "  prunekit profile runs/r56/model.safetensors --layers\n",
    )
    p.add_argument("target", help="a model.safetensors file or a zoo architecture name")
    p.add_argument("--input-shape", type=_shape, help="C x H x W, e.g. 3x32x32 (default: the model's)")
    p.add_argument("--batch-sizes", type=_csv_ints, default=(1, 64))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--mode",
        default="freeze",
        choices=["freeze", "compile", "eager"],
        help="deployed form to time (default: BN folded + torch.jit.freeze)",
    )
    p.add_argument("--layers", action="store_true", help="print the per-layer table")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser(
        "demo",
        help="train and compare on the embedded Fashion-MNIST subset (offline, a few minutes on CPU)",
        formatter_class=fmt,
        epilog="example:\n  prunekit demo --out runs/demo\n",
    )
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--epochs", type=int, default=8, help="dense training epochs")
    p.add_argument("--finetune-epochs", type=int, default=3, help="fine-tuning epochs after each pruning")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        if getattr(args, "config_parser", None) is not None:
            _apply_yaml_config(args.config_parser, args, argv)
        return int(args.func(args) or 0)
    except PrunekitError as exc:
        print(f"prunekit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prunekit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
