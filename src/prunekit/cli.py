"""`prunekit ...`: the command line. Each subcommand is a thin layer over the Python API.

Errors a user can cause (PrunekitError) are printed as one line without a traceback, exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml

from prunekit.errors import ConfigError, PrunekitError
from prunekit.train.config import TrainConfig

#: The learning rate `prune` and `finetune` start from: a trained model wants a smaller step than training.
FINETUNE_LR = 0.01

EXAMPLES_TRAIN = """examples:
  prunekit train --arch resnet56 --data cifar10 --epochs 164 --out runs/r56
  prunekit train --arch lenet5 --data mnist --data-root ../shared/data --epochs 10 --lr 0.01 --out runs/lenet5
  prunekit train --config my_run.yaml --out runs/x            # YAML keys = the long option names
  torchrun --nproc-per-node=2 -m prunekit train --arch resnet20 --data cifar10 --out runs/r20-ddp
"""


EXAMPLES_PRUNE = """examples:
  prunekit prune runs/r56/model.safetensors --method l1 --ratio 0.5 --finetune-epochs 30 --out runs/r56-l1
  prunekit prune runs/r56/model.safetensors --method random --option seed=3 --target-macs 0.5 \\
      --finetune-epochs 30 --out runs/r56-random
  prunekit prune runs/r56/model.safetensors --method l1 --ratios "*layer1*:0.6,*layer3*:0.3" --out runs/x
  prunekit prune --method l1 --help          # also lists the method's options
  prunekit list methods                      # every method; `prunekit list presets` their named selections
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


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' line breaks and shows every option's default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text, default = action.help, action.default
        unset = default is None or default is False or default is argparse.SUPPRESS or default in ((), [])
        if not text or unset or not action.option_strings or "default" in text:
            return text
        return f"{text} (default: {_shown(default).replace('%', '%%')})"


def _shown(value: Any) -> str:
    """A default as one writes it on the command line: 1,64 for a list."""
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


class _Parser(argparse.ArgumentParser):
    """Usage mistakes are user errors like any other: one line, exit status 2, no usage dump."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message} (see `{self.prog} --help`)")


def _add_data_args(p: argparse.ArgumentParser, *, default: str | None = None) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", default=default, help="dataset name (see `prunekit list datasets`)")
    g.add_argument(
        "--data-root", help="folder with the datasets (default: $PRUNEKIT_DATA or ~/.cache/prunekit/data)"
    )
    g.add_argument("--no-download", action="store_true", help="never download; fail if files are missing")
    g.add_argument(
        "--eval-batch-size", type=int, metavar="N", help="test-split batch size (default: --batch-size)"
    )
    g.add_argument(
        "--limit-train", type=int, metavar="N", help="use only the first N training images (quick runs)"
    )
    g.add_argument("--limit-test", type=int, metavar="N", help="use only the first N test images")
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


def _add_train_args(
    p: argparse.ArgumentParser, *, defaults: Mapping[str, Any] | None = None, skip: Sequence[str] = ()
) -> None:
    """One option per TrainConfig field: `--weight-decay` sets `weight_decay`, help and default come from
    the field (`defaults` overrides a command's own, e.g. fine-tuning's lr). These are also the YAML keys."""
    g = p.add_argument_group("optimisation")
    values = {**dataclasses.asdict(TrainConfig()), **(defaults or {})}
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        text = f.metadata.get("help", "").replace("%", "%%")  # argparse %-formats help
        if hints[f.name] is bool:
            # --nesterov / --no-nesterov; the help is set afterwards so no Python version appends a default.
            g.add_argument(flag, action=argparse.BooleanOptionalAction, default=values[f.name]).help = text
        else:
            kind, metavar = _arg_type(hints[f.name])
            g.add_argument(flag, type=kind, metavar=metavar, default=values[f.name], help=text)
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")


def _arg_type(hint: Any) -> tuple[Callable[[str], Any], str | None]:
    """argparse `type` and metavar of a TrainConfig field: lists are written 1,2,3; `X | None` as X."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(h for h in typing.get_args(hint) if h is not type(None))
    if typing.get_origin(hint) is list and typing.get_args(hint) == (int,):
        return _csv_ints, "N,N"
    if hint in (int, float, str):
        return hint, {int: "N", float: "F", str: None}[hint]
    raise TypeError(f"TrainConfig field type {hint!r} has no command-line form; add one in cli._arg_type")


def _train_values(args: argparse.Namespace) -> dict[str, Any]:
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}


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
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config", "list")}
    given = _given_on_command_line(parser, argv)
    for key, value in data.items():
        dest = str(key).replace("-", "_")
        if dest not in actions:
            raise ConfigError(f"{path}: unknown option {key!r}; valid options: {', '.join(sorted(actions))}")
        if dest in given:
            continue
        convert = actions[dest].type
        if isinstance(value, str) and callable(convert):
            try:
                value = convert(value)
            except (argparse.ArgumentTypeError, TypeError, ValueError) as exc:
                raise ConfigError(f"{path}: {key}: {exc}") from None
        setattr(args, dest, tuple(value) if isinstance(value, list) else value)


def _given_on_command_line(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """The options `argv` sets, however spelt (`--no-nesterov`, an abbreviation): parsed from a namespace
    that already holds None everywhere, so argparse fills in no defaults and only given options change."""
    probe = argparse.Namespace(**dict.fromkeys((a.dest for a in parser._actions), None))
    parser.parse_args(argv, namespace=probe)
    return {dest for dest, value in vars(probe).items() if value is not None}


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


def _train_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig.from_dict(_train_values(args))


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


def _stage_config(args: argparse.Namespace, prefix: str) -> TrainConfig:
    """The fine-tune or sparsify TrainConfig: shared optimisation options, that stage's epochs and lr."""
    values = _train_values(args)
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
        target_density=args.target_density,
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


def cmd_list(args: argparse.Namespace) -> int:
    print(_table(_LISTINGS[args.what]()))
    return 0


def _models() -> list[tuple[str, ...]]:
    from prunekit.models import list_models, model_entry

    rows = []
    for name in list_models():
        entry = model_entry(name)
        rows.append((name, entry.description or _first_line(entry.builder.__doc__)))
    return rows


def _methods() -> list[tuple[str, ...]]:
    from prunekit.methods import list_methods, method_class

    return [(name, _summary(method_class(name))) for name in list_methods()]


def _datasets() -> list[tuple[str, ...]]:
    from prunekit.data import list_datasets

    return [(name, _DATASETS.get(name, "")) for name in list_datasets()]


def _presets() -> list[tuple[str, ...]]:
    from prunekit.methods import list_methods, method_class

    rows = [
        (method, name, expression)
        for method in list_methods()
        for name, expression in getattr(method_class(method), "presets", {}).items()
    ]
    return rows or [("no method defines presets",)]


_LISTINGS: dict[str, Callable[[], list[tuple[str, ...]]]] = {
    "models": _models,
    "methods": _methods,
    "datasets": _datasets,
    "presets": _presets,
}

# TODO(data/catalog): these belong beside the catalog's sources; catalog.py has no description per dataset.
_DATASETS = {
    "cifar10": "CIFAR-10: 32x32 colour images, 10 classes (official python batches, downloaded and verified)",
    "cifar100": "CIFAR-100: 32x32 colour images, 100 classes (official python batches)",
    "fashion_mnist": "Fashion-MNIST: 28x28 greyscale clothing images, 10 classes (official IDX files)",
    "fashion_mnist_mini": "a Fashion-MNIST subset packaged with prunekit: works offline (the demo's data)",
    "imagefolder": "any folder of encoded images, root/{train,val}/<class>/*, decoded in loader workers",
    "imagenet": "ImageNet in the folder layout root/{train,val}/<class>/*.JPEG",
    "mnist": "MNIST: 28x28 greyscale handwritten digits, 10 classes (official IDX files)",
    "synthetic": "deterministic class-dependent random images of any shape (--data-option shape=1x28x28)",
}


def _summary(method: type) -> str:
    """A method's one-line description: its class docstring's first line, else its module's."""
    return _first_line(method.__doc__) or _first_line(sys.modules[method.__module__].__doc__)


def _first_line(doc: str | None) -> str:
    lines = (doc or "").strip().splitlines()
    return lines[0].strip() if lines else ""


def _table(rows: Sequence[Sequence[str]], indent: str = "") -> str:
    """Rows as aligned columns; the last column is not padded."""
    widths = [max((len(r[i]) for r in rows if len(r) > i + 1), default=0) for i in range(max(map(len, rows)))]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=False)]
        lines.append((indent + "  ".join([*cells, row[-1]])).rstrip())
    return "\n".join(lines)


def _method_help(name: str) -> str:
    """What `prunekit prune --method NAME --help` adds after the usual help: the method's options."""
    from prunekit.methods import method_class
    from prunekit.methods.options import describe_options

    cls = method_class(name)
    rows = [("option", "type", "default", "help")]
    for doc in describe_options(cls.Options):
        default = "(required)" if doc.default is dataclasses.MISSING else repr(doc.default)
        rows.append((doc.name, doc.type, default, doc.help))
    text = f"method {name!r}: {_summary(cls)}\n\noptions of {name!r} (give them as --option KEY=VALUE):\n"
    text += _table(rows, indent="  ") + "\n"
    if presets := getattr(cls, "presets", {}):
        text += f"\npresets of {name!r} (named selections):\n"
        text += _table(list(presets.items()), indent="  ") + "\n"
    return text


def _help_request(argv: Sequence[str]) -> dict[str, Any]:
    """`build_parser` arguments for this command line: the method registry is imported only for
    `prune --help`, whose `--method` help names every method (and, given `--method M`, lists M's options)."""
    if argv[:1] != ["prune"] or not {"-h", "--help"} & set(argv):
        return {}
    early = _Parser(prog="prunekit prune", add_help=False)
    early.add_argument("--method")
    return {"explain": True, "method": early.parse_known_args(argv[1:])[0].method}


def build_parser(*, explain: bool = False, method: str | None = None) -> argparse.ArgumentParser:
    """The `prunekit` parser. `explain`: name the registered methods in the help (imports them, so only
    for `--help`); `method`: list that method's options after `prune --help`."""
    from prunekit import __version__

    fmt = _HelpFormatter
    parser = _Parser(
        prog="prunekit",
        description="Make trained CNNs physically smaller and faster, and prove it.",
        formatter_class=fmt,
        epilog="Run `prunekit COMMAND --help` for the options of each command.",
    )
    parser.add_argument("--version", action="version", version=f"prunekit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "train", help="train a zoo model into a run folder", epilog=EXAMPLES_TRAIN, formatter_class=fmt
    )
    p.add_argument("--arch", help="zoo architecture, e.g. resnet56 (see `prunekit list models`)")
    p.add_argument("--shortcut", choices=["A", "B"], help="CIFAR ResNet shortcut option (default A)")
    p.add_argument("--out", default="runs/train", help="run folder to write")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument(
        "--config",
        help="YAML file of option: value, keyed by the long option names (weight_decay: 1e-4); "
        "command-line options win",
    )
    p.add_argument(
        "--latency-batches",
        type=_csv_ints,
        metavar="N,N",
        default=(1,),
        help="batch sizes to time, e.g. 1,64",
    )
    p.add_argument("--list", action="store_true", help="list models and datasets, then exit")
    p.add_argument("--teacher", help="model.safetensors of a teacher for knowledge distillation")
    _add_data_args(p)
    _add_train_args(p)
    p.set_defaults(func=cmd_train, config_parser=p)

    methods = "pruning method"
    if explain:
        from prunekit.methods import list_methods

        methods += f": {' | '.join(list_methods())}; with --help also lists the method's options"
    else:
        methods += " (see `prunekit list methods`)"
    p = sub.add_parser(
        "prune",
        help="prune a model file with a method, fine-tune, and compare with the dense model",
        formatter_class=fmt,
        epilog=EXAMPLES_PRUNE + ("\n" + _method_help(method) if method else ""),
    )
    p.add_argument("checkpoint", help="model.safetensors written by prunekit (e.g. by `prunekit train`)")
    p.add_argument("--method", required=True, metavar="NAME", help=methods)
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="method option, repeatable (e.g. --option seed=3; lists as 1,5,8); `--method M --help` lists "
        "M's options",
    )
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--ratio", type=float, metavar="F", help="remove this fraction of every prunable layer")
    sel.add_argument(
        "--ratios",
        metavar="SPEC",
        help='per-layer selection: "conv*:0.5,fc1:0.3" or "[0.1]+[0.6]*35+[0.0]*2"',
    )
    sel.add_argument(
        "--target-macs", type=float, metavar="F", help="keep this fraction of the dense MACs (searched)"
    )
    sel.add_argument("--speedup", type=float, metavar="F", help="MAC speed-up to reach (= 1 / target-macs)")
    sel.add_argument(
        "--target-density",
        type=float,
        metavar="F",
        help="element-wise methods: keep this fraction of nonzero weights (searched)",
    )
    p.add_argument(
        "--calib-images",
        type=int,
        metavar="N",
        help="training images drawn for tracing and data-driven criteria (default: what the method "
        "asks for, e.g. 128, or a ranking method's n_images)",
    )
    p.add_argument(
        "--sparsify-epochs", type=int, metavar="N", default=0, help="regularised training before pruning"
    )
    p.add_argument("--sparsify-lr", type=float, metavar="F", help="lr of the sparsify stage (default: --lr)")
    p.add_argument(
        "--finetune-epochs", type=int, metavar="N", default=0, help="fine-tuning epochs after pruning"
    )
    p.add_argument("--finetune-lr", type=float, metavar="F", help="lr of the fine-tune stage (default: --lr)")
    p.add_argument("--out", default="runs/prune", help="run folder to write")
    p.add_argument(
        "--latency-batches",
        type=_csv_ints,
        metavar="N,N",
        default=(1,),
        help="batch sizes to time, e.g. 1,64",
    )
    _add_data_args(p)
    # Each stage has its own epochs (--sparsify-epochs, --finetune-epochs); a plain --epochs would be ignored.
    _add_train_args(p, defaults={"lr": FINETUNE_LR}, skip=("epochs",))
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser(
        "finetune",
        help="fine-tune a (pruned) model file; stored masks stay exactly zero",
        formatter_class=fmt,
        epilog="example:\n  prunekit finetune runs/p/model.safetensors --epochs 30 --lr 0.01 --out runs/ft\n",
    )
    p.add_argument("checkpoint", help="model.safetensors written by prunekit")
    p.add_argument("--out", default="runs/finetune", help="run folder to write")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument(
        "--latency-batches",
        type=_csv_ints,
        metavar="N,N",
        default=(1,),
        help="batch sizes to time, e.g. 1,64",
    )
    _add_data_args(p)
    _add_train_args(p, defaults={"lr": FINETUNE_LR})
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser(
        "run",
        help="run a recipe (a paper's table row) end to end",
        formatter_class=fmt,
        epilog="examples:\n  prunekit run recipes/METHOD/ROW.yaml --data-root ../shared/data\n"
        "  prunekit run recipes/METHOD/ROW.yaml --dense runs/r56/model.safetensors   # skip the baseline\n"
        "  prunekit run recipes/METHOD/ROW.yaml --epochs-scale 0.02 --limit-train 5000   # a smoke run\n",
    )
    p.add_argument("recipe", help="a recipe YAML file (see recipes/)")
    p.add_argument("--out", help="run folder (default runs/<recipe name>)")
    p.add_argument("--dense", help="start from this model file instead of training the recipe's baseline")
    p.add_argument("--data-root", help="folder with the datasets")
    p.add_argument("--no-download", action="store_true", help="never download; fail if files are missing")
    p.add_argument("--epochs-scale", type=float, default=1.0, help="shorten every schedule (smoke runs)")
    p.add_argument("--limit-train", type=int, metavar="N", help="use only the first N training images")
    p.add_argument("--limit-test", type=int, metavar="N", help="use only the first N test images")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "report",
        help="compare run folders in one table and an accuracy-vs-MACs plot",
        formatter_class=fmt,
        epilog="example:\n  prunekit report runs/r56 runs/r56-l1 runs/r56-random --out runs/compare\n",
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
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size, help="images per batch")
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
    p.add_argument(
        "--batch-sizes", type=_csv_ints, metavar="N,N", default=(1, 64), help="batch sizes to time"
    )
    p.add_argument("--threads", type=int, default=1, help="CPU threads while timing")
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
    p.add_argument("--out", default="runs/demo", help="run folder to write")
    p.add_argument("--epochs", type=int, default=8, help="dense training epochs")
    p.add_argument(
        "--finetune-epochs", type=int, metavar="N", default=3, help="fine-tuning epochs after each pruning"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the whole demo")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "list",
        help="list the models, methods, datasets or method presets, one line each",
        formatter_class=fmt,
        epilog="examples:\n  prunekit list methods\n  prunekit list presets\n",
    )
    p.add_argument("what", choices=list(_LISTINGS), help="what to list")
    p.set_defaults(func=cmd_list)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(**_help_request(argv))
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        if getattr(args, "config_parser", None) is not None:
            _apply_yaml_config(args.config_parser, args, argv[argv.index(args.command) + 1 :])
        return int(args.func(args) or 0)
    except PrunekitError as exc:
        print(f"prunekit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prunekit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
