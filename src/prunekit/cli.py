"""`prunekit ...`: the command line. Each subcommand is a thin layer over the Python API.

Errors a user can cause (PrunekitError) are printed as one line without a traceback, exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import traceback
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
  prunekit prune runs/r56/model.safetensors --method tpp --target-macs 0.5 --sparsify-epochs auto \\
      --finetune-epochs 120 --out runs/r56-tpp  # the method's declared sparsify stage (steps, SGD lr 1e-3)
  prunekit prune --resume --out runs/r56-tpp  # continue an interrupted run from its last epoch
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
        if message.startswith("unrecognized arguments") and "--epochs" in message.split():
            # `prune` has one length per stage; a plain --epochs would have to be ignored.
            message += "; prune's stages take --finetune-epochs N and --sparsify-epochs N"
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


def _add_run_folder_args(p: argparse.ArgumentParser, *, resume: bool) -> None:
    from prunekit.train.threads import physical_cores

    if resume:
        p.add_argument(
            "--resume",
            action="store_true",
            help="continue the run in --out from its last checkpoint; its options come from its config.yaml",
        )
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out (else refused)")
    p.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help=f"CPU threads for training and timing (default: the physical cores not kept busy by other "
        f"work; {physical_cores()} cores here)",
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
    """The data options as given; what is left open (no --data, no --no-normalize) is filled from the model
    file by runs that start from one, and is an error for `train`."""
    from prunekit.pipeline import DataSpec

    return DataSpec(
        name=args.data,
        root=args.data_root,
        download=not args.no_download,
        batch_size=args.batch_size,
        eval_batch_size=args.eval_batch_size,
        limit_train=args.limit_train,
        limit_test=args.limit_test,
        seed=getattr(args, "seed", 0),
        normalize=False if args.no_normalize else None,
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
        "command_line": _options_record(args),
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
        overwrite=args.overwrite,
        device=args.device,
        teacher_path=args.teacher,
        latency_batches=args.latency_batches,
        threads=args.threads,
        config_record=record,
    )
    _print_warnings(summary)
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


def _print_warnings(summary: Mapping[str, Any]) -> None:
    """The run's warning channel on the terminal (they are also in summary.json)."""
    for text in summary.get("warnings") or ():
        print(f"prunekit: warning: {text}", file=sys.stderr)


#: Namespace entries that are not options of the command (parser plumbing).
_PLUMBING = {"func", "config_parser", "resume_parser", "command"}
#: Options a resumed run may change: where and how fast it runs, not what it computes.
_RESUME_MAY_CHANGE = {"resume", "out", "device", "threads", "config", "overwrite"}
#: Options a resumed run never takes from the record (the others it does, device and threads included).
_NOT_RESTORED = {"resume", "out", "config", "overwrite"}


def _options_record(args: argparse.Namespace) -> dict[str, Any]:
    """Every option of the command as resolved (defaults included): what `--resume` reads back."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in vars(args).items() if k not in _PLUMBING}


def _apply_resume(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: Sequence[str]) -> None:
    """`--resume` needs only `--out`: the run's options come from its config.yaml. An option given again
    must have the value the run was started with, or the run would no longer be the one recorded."""
    from prunekit.report.run_folder import RunFolder, open_run

    if args.out is None:  # only `run` has no default --out: it follows the recipe's name
        args.out = _recipe_out(args)
    open_run(args.out, resume=True, overwrite=args.overwrite)
    config = RunFolder(args.out).read_config()
    recorded = config.get("command_line")
    if config.get("command") != args.command or not isinstance(recorded, dict):
        raise ConfigError(
            f"{args.out} holds a {config.get('command') or 'older prunekit'} run that `prunekit "
            f"{args.command} --resume` cannot continue; start a new run with another --out"
        )
    given = _given_on_command_line(parser, argv)
    for dest in sorted(given - _RESUME_MAY_CHANGE):
        now, then = _options_record(args).get(dest), recorded.get(dest)
        if now != then:
            flag = "--" + dest.replace("_", "-")
            raise ConfigError(
                f"{flag} {_shown(now)} differs from the run being resumed ({flag} {_shown(then)} in "
                f"{Path(args.out) / 'config.yaml'}); a resumed run keeps its options: drop {flag}, or start "
                "a new run with another --out"
            )
    for dest, value in recorded.items():
        if dest not in given and dest not in _NOT_RESTORED and hasattr(args, dest):
            setattr(args, dest, tuple(value) if isinstance(value, list) else value)


def _stage_config(args: argparse.Namespace, prefix: str) -> TrainConfig:
    """The fine-tune or sparsify TrainConfig: shared optimisation options, that stage's epochs and lr."""
    values = _train_values(args)
    values["epochs"] = getattr(args, f"{prefix}_epochs")
    lr = getattr(args, f"{prefix}_lr", None)
    if lr is not None:
        values["lr"] = lr
    return TrainConfig.from_dict(values)


def _epochs_or_auto(text: str) -> int | str:
    """`--sparsify-epochs`: a whole number of epochs, or ``auto`` (the method's declared schedule)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of epochs or auto, got {text!r}") from None


def _sparsify_stage(args: argparse.Namespace) -> tuple[TrainConfig | None, dict[str, Any]]:
    """The sparsify stage's TrainConfig and the method options that go with it.

    The method's declared schedule (`Method.schedule`, what `prunekit compare` runs) sets the stage's
    optimiser (its `sparsify` overrides: e.g. TPP's SGD at a constant lr 1e-3) wherever the command line
    does not: `--sparsify-lr`, then an explicitly given `--lr`, `--momentum`, ... win over it, and the
    schedule wins over the command's defaults. ``--sparsify-epochs auto`` takes the declared length and
    the schedule's method options too (under `--option`); a method that sets its length in steps (TPP,
    GReg) refuses any other positive count (`pipeline.sparsify_config`)."""
    from prunekit.methods import method_class

    schedule = method_class(args.method).schedule
    options = _method_options(args.option)
    epochs = args.sparsify_epochs
    if epochs == "auto":
        epochs = schedule.sparsify_epochs
        options = {**schedule.options, **options}
    elif epochs < 0:
        raise ConfigError(f"--sparsify-epochs must be ≥ 0 or auto, got {epochs}")
    if epochs == 0:
        return None, options
    given = set(args.given_options or ())
    values = {**_train_values(args), "epochs": epochs}
    values |= {key: value for key, value in schedule.sparsify.items() if key not in given}
    if args.sparsify_lr is not None:
        values["lr"] = args.sparsify_lr
    return TrainConfig.from_dict(values), options


def cmd_prune(args: argparse.Namespace) -> int:
    from prunekit.pipeline import PruneSpec, prune_run

    missing = [
        name for name, value in (("checkpoint", args.checkpoint), ("--method", args.method)) if not value
    ]
    if missing:
        raise ConfigError(
            f"the following arguments are required: {', '.join(missing)} (or --resume with the --out of a "
            "prune run)"
        )
    sparsify, options = _sparsify_stage(args)
    spec = PruneSpec(
        method=args.method,
        options=options,
        ratio=args.ratio,
        ratios=args.ratios,
        target_macs=args.target_macs,
        speedup=args.speedup,
        target_density=args.target_density,
        calib_images=args.calib_images,
        target_latency=args.target_latency,
        speedup_latency=args.speedup_latency,
        round_to=args.round_to,
    )
    finetune = _stage_config(args, "finetune") if args.finetune_epochs else None
    record = {
        "command": "prune",
        "command_line": _options_record(args),
        "checkpoint": args.checkpoint,
        "prune": vars(spec),
        "sparsify": sparsify.to_dict() if sparsify else None,
        "finetune": finetune.to_dict() if finetune else None,
    }
    summary = prune_run(
        args.checkpoint,
        spec,
        _data_spec(args),
        args.out,
        sparsify=sparsify,
        finetune=finetune,
        device=args.device,
        latency_batches=args.latency_batches,
        threads=args.threads,
        teacher_path=args.teacher,
        allow_noop=args.allow_noop,
        overwrite=args.overwrite,
        resume=args.resume,
        config_record=record,
    )
    _print_warnings(summary)
    d, p = summary["dense"], summary["pruned"]
    print(f"dense  top-1 {d['top1']:.2f} %  MACs {d['macs'] / 1e6:.2f}M  params {d['params']:,}")
    print(
        f"pruned top-1 {p['top1']:.2f} % ({p['top1_before_finetune']:.2f} % before fine-tuning)  "
        f"MACs {p['macs'] / 1e6:.2f}M ({summary['mac_speedup']:.2f}× fewer)  "
        f"params {p['params']:,}  → {args.out}"
    )
    lat = (summary.get(summary.get("method") or "") or {}).get("latency")
    if lat:  # a latency budget: what the table predicted and what the pruned model measured
        low, high = lat["measured_fraction_range"]
        print(
            f"latency at batch {lat['batch_size']}, {lat['threads']} thread(s): target "
            f"{lat['target_fraction']:.3f} of dense, predicted {lat['predicted_fraction']:.3f}, "
            f"measured {lat['measured_fraction']:.3f} "
            f"({low:.3f}–{high:.3f}); {lat['dense_ms']:.2f} → {lat['pruned_ms']:.2f} ms"
        )
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from prunekit.pipeline import finetune_run

    if not args.checkpoint:
        raise ConfigError("finetune needs the model file to fine-tune (or --resume with --out of a run)")
    cfg = _train_config(args)
    record = {
        "command": "finetune",
        "command_line": _options_record(args),
        "checkpoint": args.checkpoint,
        "train": cfg.to_dict(),
    }
    summary = finetune_run(
        args.checkpoint,
        _data_spec(args),
        cfg,
        args.out,
        resume=args.resume,
        overwrite=args.overwrite,
        device=args.device,
        latency_batches=args.latency_batches,
        threads=args.threads,
        teacher_path=args.teacher,
        config_record=record,
    )
    _print_warnings(summary)
    print(
        f"top-1 {summary['top1']:.2f} %  params {summary['params']:,}  "
        f"MACs {summary['macs'] / 1e6:.2f}M  → {args.out}"
    )
    return 0


def _recipe_out(args: argparse.Namespace) -> str:
    """`prunekit run`'s folder without --out: runs/<recipe name>."""
    from prunekit.recipes import load_recipe

    if not args.recipe:
        raise ConfigError("run needs the recipe YAML file (or --resume with the --out of a recipe run)")
    return f"runs/{load_recipe(args.recipe).name}"


def cmd_run(args: argparse.Namespace) -> int:
    from prunekit.recipes import load_recipe, run_recipe

    args.out = args.out or _recipe_out(args)
    recipe = load_recipe(args.recipe)
    summary = run_recipe(
        recipe,
        args.out,
        dense_checkpoint=args.dense,
        data_root=args.data_root,
        epochs_scale=args.epochs_scale,
        limit_train=args.limit_train,
        limit_test=args.limit_test,
        download=not args.no_download,
        device=args.device,
        overwrite=args.overwrite,
        resume=args.resume,
        threads=args.threads,
        config_record={"command": "run", "command_line": _options_record(args)},
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
        SEPARATE,
        CostPoint,
        RunFolder,
        comparison_csv,
        comparison_markdown,
        comparison_table,
        model_files_present,
        plot_accuracy_vs_cost,
        retime,
        rows_of,
    )

    rows = rows_of(args.runs)
    batches = args.latency_batches or tuple(sorted({b for r in rows for b in r.latency_ms})) or (1,)
    # Latencies from separate runs are only comparable when timed again together; do it whenever we can.
    measure = model_files_present(args.runs) if args.measure is None else args.measure
    timing = SEPARATE
    if measure:
        rows, how = retime(args.runs, rows, batch_sizes=batches, threads=args.threads, repeats=args.repeats)
        timing = how.describe()
    Console(width=160).print(
        comparison_table(rows, title="prunekit report (first run = reference)", timing=timing, paired=measure)
    )
    if args.out:
        out = RunFolder(args.out)
        b = min(batches)
        points = [
            CostPoint.of(r.name, r.macs, r.top1 or 0.0, r.latency_ms.get(b), r.latency_stats.get(b))
            for r in rows
        ]
        plot = plot_accuracy_vs_cost(points, out.file("accuracy_vs_cost.png"), batch_size=b, timing=timing)
        out.write_text(
            "report.md",
            "# Comparison\n\n"
            + comparison_markdown(rows, timing, paired=measure)
            + f"\n![accuracy vs MACs and latency]({plot.name})\n",
        )
        out.write_text("report.csv", comparison_csv(rows, paired=measure))
        print(f"wrote {out.path}/report.md, report.csv and {plot.name}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from prunekit.model_import import import_to_file

    result = import_to_file(
        args.checkpoint,
        args.source,
        args.arch,
        args.out,
        overwrite=args.overwrite,
        dataset=args.data,
        normalize=not args.no_normalize,
    )
    arch = result.model.prunekit_arch
    extra = f", {len(result.masks)} element-wise masks kept" if result.masks else ""
    print(
        f"imported {args.checkpoint} ({args.source}) as {arch['name']} {arch['kwargs']}: "
        f"{len(result.renamed)} keys renamed, {len(result.filled)} filled from the architecture{extra}; "
        f"wrote {args.out}"
    )
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
    from prunekit.train.threads import check_threads

    threads = check_threads(args.threads)
    if any(b < 1 for b in args.batch_sizes) or not args.batch_sizes:
        raise ConfigError(f"--batch-sizes must be batch sizes ≥ 1, e.g. 1,64; got {_shown(args.batch_sizes)}")
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
        res = latency(model, shape, batch_size=b, threads=threads, mode=args.mode)
        console.print(f"latency {res}")
    if args.latency_table:
        from prunekit.measure.latency_table import LatencyTable, in_model_layer_latencies

        b = args.batch_sizes[0]
        table = LatencyTable(b, threads)
        rows = in_model_layer_latencies(model, shape, batch_size=b, threads=threads)
        predicted = table.lookup_many(s for s, _ in rows.values())
        console.print(
            f"per layer at batch {b}, {threads} thread(s): lookup table (alone, frozen) vs in the model, "
            "and the MACs per second the layer reached in the model (a narrow layer runs far below a wide "
            "one: its MACs do not become speed)"
        )
        for (name, (shape, measured)), guess in zip(rows.items(), predicted, strict=True):
            rate = shape.macs() * b / max(measured, 1e-9) / 1e3  # MACs per µs / 1e3 = GMAC/s
            console.print(
                f"  {name:<28} predicted {guess:10.1f} µs  measured {measured:10.1f} µs  {rate:7.2f} GMAC/s",
                soft_wrap=True,  # one line per layer, whatever the terminal's width
            )
        console.print(
            f"  {'total':<28} predicted {sum(predicted):10.1f} µs  measured "
            f"{sum(m for _, m in rows.values()):10.1f} µs"
        )
    if args.runtime == "onnxruntime":
        from prunekit.export import profile_onnxruntime

        for line in profile_onnxruntime(model, shape, args.batch_sizes, threads, mode=args.mode):
            console.print(line)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from prunekit.export import export_model_file

    report = export_model_file(args.checkpoint, args.out, _data_spec(args), fmt=args.format)
    print(
        f"wrote {report.path} ({report.bytes:,} bytes, opset {report.opset}, {report.folded_batchnorms} "
        f"BatchNorms folded, dynamic batch); onnxruntime matches PyTorch on real inputs at batch "
        f"{', '.join(map(str, report.checked_batches))} (max |diff| {report.max_abs_diff:.2e})"
    )
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from prunekit.compare import (
        CompareSpec,
        parse_floats,
        parse_method_options,
        parse_methods,
        parse_seeds,
        run_compare,
    )

    finetune = _stage_config(args, "finetune")
    spec = CompareSpec(
        parse_methods(args.methods),
        parse_floats(args.budget, "--budget"),
        finetune,
        seeds=parse_seeds(args.seeds),
        sparsify_epochs=args.sparsify_epochs,
        calib_images=args.calib_images,
        latency_batches=args.latency_batches,
        method_options=parse_method_options(args.option),
    )
    train = dataclasses.replace(_train_config(args), epochs=args.epochs) if args.epochs else None
    if train is None and args.lr != TrainConfig().lr:  # --lr is the dense training's; fine-tuning has its own
        raise ConfigError("--lr sets the dense training's learning rate (with --epochs); use --finetune-lr")
    result = run_compare(
        args.model,
        _data_spec(args),
        spec,
        args.out,
        train=train,
        model_kwargs={"shortcut": args.shortcut} if args.shortcut else None,
        device=args.device,
        threads=args.threads,
        overwrite=args.overwrite,
        resume=args.resume,
    )
    for row, error in result.failed.items():
        print(f"prunekit: warning: {row} failed: {error}", file=sys.stderr)
    print(f"{len(result.rows)} method rows, {len(result.failed)} failed → {args.out}/compare.md")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from prunekit.demo import run_demo

    run_demo(
        out=Path(args.out),
        epochs=args.epochs,
        finetune_epochs=args.finetune_epochs,
        seed=args.seed,
        overwrite=args.overwrite,
        threads=args.threads,
    )
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
    if cls.needs_sparsify():
        schedule = cls.schedule
        try:
            steps = cls().sparsify_steps(1)  # with the default options
        except PrunekitError:  # a method whose options have no defaults: its length is shown in epochs
            steps = None
        length = f"{steps:,} steps" if steps is not None else f"{schedule.sparsify_epochs} epochs"
        settings = ", ".join(f"{k}={v}" for k, v in {**schedule.sparsify, **schedule.options}.items())
        text += (
            f"\ndeclared sparsify stage of {name!r} (--sparsify-epochs auto): {length}"
            f"{'; ' + settings if settings else ''}\n"
        )
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
    _add_run_folder_args(p, resume=True)
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
    p.set_defaults(func=cmd_train, config_parser=p, resume_parser=p)

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
    p.add_argument(
        "checkpoint",
        nargs="?",
        help="model.safetensors written by prunekit (e.g. by `prunekit train`; not with --resume)",
    )
    p.add_argument("--method", metavar="NAME", help=methods)  # required unless --resume (cmd_prune)
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
    sel.add_argument(
        "--target-latency",
        type=float,
        metavar="F",
        help="keep this fraction of the dense deployed latency at the first --latency-batches size and "
        "--threads (per-layer lookup table, then measured)",
    )
    sel.add_argument(
        "--speedup-latency", type=float, metavar="S", help="measured-latency speed-up to reach (= 1 / F)"
    )
    p.add_argument(
        "--round-to",
        metavar="N|auto|auto+depth",
        help="kept widths are multiples of N (auto: the multiple this machine runs fastest, measured once "
        "and cached; with --target-macs/--speedup, auto also moves widths one multiple up or down where the "
        "latency table, at the first --latency-batches size and --threads, predicts the same budget runs "
        "faster; auto+depth may also remove whole residual blocks there, which costs more accuracy)",
    )
    p.add_argument(
        "--calib-images",
        type=int,
        metavar="N",
        help="training images drawn for tracing and data-driven criteria (default: what the method "
        "asks for, e.g. 128, or a ranking method's n_images)",
    )
    p.add_argument(
        "--sparsify-epochs",
        type=_epochs_or_auto,
        metavar="N|auto",
        default=0,
        help="regularised training before pruning; auto: the method's declared schedule (its length, in "
        "steps for TPP/GReg, and its options); the stage's optimiser settings are the method's declared "
        "ones unless given here",
    )
    p.add_argument(
        "--sparsify-lr",
        type=float,
        metavar="F",
        help="lr of the sparsify stage (default: the method's declared lr, else --lr)",
    )
    p.add_argument(
        "--finetune-epochs", type=int, metavar="N", default=0, help="fine-tuning epochs after pruning"
    )
    p.add_argument("--finetune-lr", type=float, metavar="F", help="lr of the fine-tune stage (default: --lr)")
    p.add_argument("--teacher", help="model.safetensors to distil from while fine-tuning (e.g. the dense)")
    p.add_argument(
        "--allow-noop",
        action="store_true",
        help="accept a pruning that removes nothing (else it is an error saying what to change)",
    )
    p.add_argument("--out", default="runs/prune", help="run folder to write")
    _add_run_folder_args(p, resume=True)
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
    # given_options: what the command line set (main fills it; a resumed run reads it back from its record),
    # so the method's declared sparsify settings yield to the user's and to nothing else.
    p.set_defaults(func=cmd_prune, resume_parser=p, given_options=None)

    p = sub.add_parser(
        "finetune",
        help="fine-tune a (pruned) model file; stored masks stay exactly zero",
        formatter_class=fmt,
        epilog="example:\n  prunekit finetune runs/p/model.safetensors --epochs 30 --lr 0.01 --out runs/ft\n",
    )
    p.add_argument("checkpoint", nargs="?", help="model.safetensors written by prunekit (not with --resume)")
    p.add_argument("--out", default="runs/finetune", help="run folder to write")
    p.add_argument("--teacher", help="model.safetensors to distil from (knowledge distillation)")
    _add_run_folder_args(p, resume=True)
    p.add_argument(
        "--latency-batches",
        type=_csv_ints,
        metavar="N,N",
        default=(1,),
        help="batch sizes to time, e.g. 1,64",
    )
    _add_data_args(p)
    _add_train_args(p, defaults={"lr": FINETUNE_LR})
    p.set_defaults(func=cmd_finetune, resume_parser=p)

    p = sub.add_parser(
        "run",
        help="run a recipe (a paper's table row) end to end",
        formatter_class=fmt,
        epilog="examples:\n  prunekit run recipes/METHOD/ROW.yaml --data-root ../shared/data\n"
        "  prunekit run recipes/METHOD/ROW.yaml --dense runs/r56/model.safetensors   # skip the baseline\n"
        "  prunekit run recipes/METHOD/ROW.yaml --epochs-scale 0.02 --limit-train 5000   # a smoke run\n"
        "  prunekit run --resume --out runs/ROW   # continue an interrupted run; finished stages are kept\n",
    )
    p.add_argument(
        "recipe", nargs="?", help="a recipe YAML file (see recipes/); --resume reads it from the run's config"
    )
    p.add_argument("--out", help="run folder (default runs/<recipe name>)")
    p.add_argument("--dense", help="start from this model file instead of training the recipe's baseline")
    p.add_argument("--data-root", help="folder with the datasets")
    p.add_argument("--no-download", action="store_true", help="never download; fail if files are missing")
    p.add_argument("--epochs-scale", type=float, default=1.0, help="shorten every schedule (smoke runs)")
    p.add_argument("--limit-train", type=int, metavar="N", help="use only the first N training images")
    p.add_argument("--limit-test", type=int, metavar="N", help="use only the first N test images")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    _add_run_folder_args(p, resume=True)
    p.set_defaults(func=cmd_run, resume_parser=p)

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
    p.add_argument("--out", help="write report.md and accuracy_vs_cost.png here")
    p.add_argument(
        "--measure",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="re-time every run's model interleaved in this process (default: when all model files are "
        "here); --no-measure shows the latencies each run recorded in its own process",
    )
    p.add_argument(
        "--latency-batches", type=_csv_ints, metavar="N,N", help="batch sizes to time (default: the runs')"
    )
    p.add_argument("--threads", type=int, default=1, help="CPU threads while re-timing")
    p.add_argument("--repeats", type=int, default=50, help="timed forwards per model and batch size")
    p.set_defaults(func=cmd_report)

    from prunekit.import_sources import SOURCES, epilog

    p = sub.add_parser(
        "import",
        help="turn a checkpoint released with a paper's code into a prunekit model file",
        formatter_class=fmt,
        epilog=epilog(),
    )
    p.add_argument("checkpoint", help="the released file (.pth, .pt, .pth.tar; read with weights_only=True)")
    p.add_argument("--from", dest="source", required=True, choices=list(SOURCES), help="whose code saved it")
    p.add_argument("--arch", required=True, help="zoo architecture (see `prunekit list models`)")
    p.add_argument("--out", required=True, help="model file to write (.safetensors)")
    p.add_argument("--data", help="dataset the checkpoint was trained on, recorded for later commands")
    p.add_argument(
        "--no-normalize", action="store_true", help="its inputs were pixels in [0, 1] (ToTensor only)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_import)

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
    p.add_argument(
        "--threads", type=int, metavar="N", help="CPU threads while timing (default: the idle physical cores)"
    )
    p.add_argument(
        "--mode",
        default="freeze",
        choices=["freeze", "compile", "eager"],
        help="deployed form to time (default: BN folded + torch.jit.freeze)",
    )
    p.add_argument("--layers", action="store_true", help="print the per-layer table")
    p.add_argument(
        "--latency-table",
        action="store_true",
        help="per conv/linear layer: the latency lookup table's prediction (cached, as the latency budget "
        "uses it) beside the time measured inside the model, at the first batch size",
    )
    p.add_argument(
        "--runtime",
        default="torch",
        choices=["torch", "onnxruntime"],
        help="onnxruntime: also export to ONNX and time it in onnxruntime beside the PyTorch deployed form "
        "(needs prunekit[onnx])",
    )
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser(
        "export",
        help="export a model file to ONNX (BN folded, dynamic batch), checked against PyTorch first",
        formatter_class=fmt,
        epilog="example:\n  prunekit export runs/prune/model.safetensors --format onnx --out m.onnx\n",
    )
    p.add_argument("checkpoint", help="model.safetensors written by prunekit")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="output format")
    p.add_argument("--out", required=True, help="file to write (e.g. m.onnx), atomically")
    p.add_argument(
        "--batch-size", type=int, default=8, help="real test images the ONNX outputs are checked on"
    )
    _add_data_args(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "compare",
        help="every method at the same MAC budget from one dense model, same fine-tuning, several seeds",
        formatter_class=fmt,
        epilog="examples:\n  prunekit compare --model resnet20 --data cifar10 --epochs 160 --budget 0.5 "
        "--methods all --seeds 3 --finetune-epochs 40 --out runs/cmp\n"
        "  prunekit compare --model runs/dense/model.safetensors --budget 0.5,0.25 --methods l1,random "
        "--finetune-epochs 10 --out runs/cmp\n"
        "An interrupted compare continues with --resume (finished rows are kept).",
    )
    p.add_argument("--model", required=True, help="a dense model file, or a zoo architecture to train first")
    p.add_argument("--methods", default="all", help="'all' or a comma list (`prunekit list methods`)")
    p.add_argument("--budget", default="0.5", help="fractions of the dense MACs, comma-separated: 0.5,0.25")
    p.add_argument("--seeds", default="1", help="a count (3: seeds 0,1,2) or a list (0,5,9)")
    p.add_argument("--epochs", type=int, metavar="N", help="train the dense --model architecture N epochs")
    p.add_argument("--shortcut", choices=["A", "B"], help="CIFAR ResNet shortcut option of a trained --model")
    p.add_argument(
        "--sparsify-epochs", type=int, metavar="N", help="length of every regulariser's sparsify stage "
        "(default: each method's own schedule; methods whose schedule is set in steps take --option)"
    )  # fmt: skip
    p.add_argument("--finetune-epochs", type=int, metavar="N", default=10, help="the same fine-tune for all")
    p.add_argument("--finetune-lr", type=float, default=FINETUNE_LR, help="fine-tuning learning rate")
    p.add_argument(
        "--calib-images", type=int, metavar="N", help="calibration images (default: each method's)"
    )
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="METHOD.KEY=VALUE",
        help="one method's option over its default schedule's, repeatable "
        "(see prunekit prune --method M --help)",
    )
    p.add_argument(
        "--latency-batches", type=_csv_ints, default=(1, 64), metavar="N,N", help="batch sizes timed"
    )
    p.add_argument("--out", required=True, help="folder of the comparison (one run folder per row inside)")
    _add_data_args(p)
    _add_train_args(p, skip=("epochs",))
    _add_run_folder_args(p, resume=True)
    p.set_defaults(func=cmd_compare)

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
    _add_run_folder_args(p, resume=False)
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
        command_argv = argv[argv.index(args.command) + 1 :]
        if getattr(args, "resume", False) and getattr(args, "resume_parser", None) is not None:
            # compare checks its own recorded configuration (`compare.run_compare`).
            _apply_resume(args.resume_parser, args, command_argv)
        elif hasattr(args, "given_options"):
            args.given_options = sorted(_given_on_command_line(args.resume_parser, command_argv))
        elif getattr(args, "config_parser", None) is not None:
            _apply_yaml_config(args.config_parser, args, command_argv)
        return int(args.func(args) or 0)
    except PrunekitError as exc:
        print(f"prunekit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prunekit: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not the user's doing: one line that says so and where
        if os.environ.get("PRUNEKIT_TRACEBACK"):
            raise
        print(f"prunekit: error: {_internal_error(exc)}", file=sys.stderr)
        return 2


def _internal_error(exc: Exception) -> str:
    """One line for an exception prunekit did not expect: what, where, and how to report it."""
    text = (str(exc).strip().splitlines() or [""])[0]
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" at {Path(frame.filename).name}:{frame.lineno}" if frame else ""
    return (
        f"internal error ({type(exc).__name__}{where}: {text}); this is a prunekit bug or an unsupported "
        "model — please report it with the command line (PRUNEKIT_TRACEBACK=1 shows the traceback)"
    )


if __name__ == "__main__":
    raise SystemExit(main())
