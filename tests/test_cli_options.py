"""CLI options generated from dataclasses (TrainConfig, each method's Options), and `prunekit list`."""

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import prunekit.cli
from prunekit.cli import FINETUNE_LR, build_parser, main
from prunekit.data import list_datasets
from prunekit.errors import ConfigError
from prunekit.methods import list_methods, method_class
from prunekit.models import list_models
from prunekit.train import TrainConfig

FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]


def parse(*argv: str):
    return build_parser().parse_args(list(argv))


def help_text(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    return capsys.readouterr().out


# --- TrainConfig → options -----------------------------------------------------------------------------


def test_train_defaults_are_the_dataclass_defaults() -> None:
    args, defaults = parse("train"), TrainConfig()
    for name in FIELDS:
        assert getattr(args, name) == getattr(defaults, name), name
    assert prunekit.cli._train_config(args) == defaults


def test_finetune_and_prune_start_from_the_fine_tuning_lr() -> None:
    defaults = TrainConfig()
    for argv in (["finetune", "m.safetensors"], ["prune", "m.safetensors", "--method", "l1"]):
        args = parse(*argv)
        assert args.lr == FINETUNE_LR
        for name in FIELDS:
            if name not in ("lr", "epochs"):
                assert getattr(args, name) == getattr(defaults, name), (argv[0], name)
    # Each prune stage has its own epochs; a plain --epochs would be silently ignored there.
    assert not hasattr(parse("prune", "m.safetensors", "--method", "l1"), "epochs")
    assert parse("finetune", "m.safetensors").epochs == defaults.epochs


def test_every_field_is_documented_and_its_help_shows_the_dataclass_default(capsys) -> None:
    text = " ".join(help_text(["train", "--help"], capsys).split())  # undo argparse's line wrapping
    for f in dataclasses.fields(TrainConfig):
        assert f.metadata.get("help"), f"TrainConfig.{f.name} has no help"
        flag = "--" + f.name.replace("_", "-")
        assert " ".join(f.metadata["help"].split()) in text, flag
    assert "--weight-decay F L2 weight decay (default: 0.0005)" in text
    assert "--epochs N training epochs (default: 10)" in text
    assert "--nesterov, --no-nesterov" in text
    finetune = " ".join(help_text(["finetune", "--help"], capsys).split())
    assert f"(default: {FINETUNE_LR})" in finetune


def test_existing_flags_keep_working() -> None:
    args = parse(
        "train",
        *("--weight-decay", "1e-4", "--nesterov", "--compile", "--schedule", "multistep"),
        *("--milestones", "50,100", "--grad-clip", "2", "--teacher", "t.safetensors", "--device", "cpu"),
    )
    cfg = prunekit.cli._train_config(args)
    assert (cfg.weight_decay, cfg.nesterov, cfg.compile, cfg.milestones) == (1e-4, True, True, [50, 100])
    assert cfg.grad_clip == 2.0 and args.teacher == "t.safetensors" and args.device == "cpu"
    assert prunekit.cli._train_config(parse("train", "--compile", "--no-compile")).compile is False


def test_prune_stages_take_their_own_epochs_and_lr() -> None:
    args = parse(
        "prune", "m.safetensors", "--method", "l1", "--lr", "0.05", "--sparsify-epochs", "3",
        "--finetune-epochs", "4", "--finetune-lr", "0.001", "--weight-decay", "0",
    )  # fmt: skip
    sparsify = prunekit.cli._stage_config(args, "sparsify")
    finetune = prunekit.cli._stage_config(args, "finetune")
    assert (sparsify.epochs, sparsify.lr, finetune.epochs, finetune.lr) == (3, 0.05, 4, 0.001)
    assert sparsify.weight_decay == finetune.weight_decay == 0.0


def test_yaml_keys_are_the_generated_names_and_the_command_line_wins(tmp_path, monkeypatch) -> None:
    seen = {}

    def fake_train(args):
        seen["cfg"] = prunekit.cli._train_config(args)
        return 0

    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {"weight_decay": 1e-4, "nesterov": True, "schedule": "multistep", "milestones": "5,9", "seed": 3}
        )
    )
    monkeypatch.setattr(prunekit.cli, "cmd_train", fake_train)
    assert main(["train", "--config", str(cfg), "--no-nesterov", "--seed", "7"]) == 0
    got = seen["cfg"]
    assert (got.weight_decay, got.milestones, got.schedule) == (1e-4, [5, 9], "multistep")
    assert got.nesterov is False and got.seed == 7  # given on the command line, however spelt


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--epochs", "ten"], "argument --epochs: invalid int value: 'ten'"),
        (["train", "--lr", "fast"], "argument --lr: invalid float value"),
        (["train", "--milestones", "5,x"], "expected comma-separated integers"),
        (["train", "--arch", "lenet5", "--data", "synthetic", "--epochs", "0"], "epochs must be at least 1"),
        (["train", "--arch", "lenet5", "--data", "synthetic", "--amp", "fp8"], "amp must be one of"),
        (["train", "--shortcut", "C"], "invalid choice: 'C'"),
        (["prune", "m.safetensors"], "required: --method"),
        (["prune", "m.safetensors", "--method", "l1", "--ratio", "0.5", "--target-density", "0.1"],
         "not allowed with argument"),
        (["prune", "m.safetensors", "--method", "l1", "--epochs", "3"], "unrecognized arguments: --epochs"),
        (["prune", "--method", "no_such_method", "--help"], "unknown method 'no_such_method'; valid methods"),
        (["list", "everything"], "invalid choice: 'everything'"),
        (["trian"], "invalid choice: 'trian'"),
    ],
)  # fmt: skip
def test_bad_option_values_are_one_line_errors(argv, message, capsys, tmp_path) -> None:
    assert main([*argv, *(["--out", str(tmp_path / "o")] if argv[0] == "train" else [])]) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert err.startswith("prunekit: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and "usage:" not in err + captured.out
    assert message in err


def test_bad_yaml_value_is_one_line(tmp_path, capsys) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("milestones: 5,x\n")
    assert main(["train", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"prunekit: error: {cfg}: milestones: expected comma-separated integers")


def test_target_density_reaches_the_prune_spec(monkeypatch, capsys) -> None:
    seen = {}

    def fake_prune_run(checkpoint, spec, *args, **kwargs):
        seen["spec"] = spec
        raise ConfigError("stop here")

    monkeypatch.setattr("prunekit.pipeline.prune_run", fake_prune_run)
    assert main(["prune", "m.safetensors", "--method", "l1", "--target-density", "0.25"]) == 2
    assert seen["spec"].target_density == 0.25 and seen["spec"].ratio is None
    assert "stop here" in capsys.readouterr().err


# --- method options in --help ---------------------------------------------------------------------------


def test_method_help_lists_the_methods_options(capsys) -> None:
    out = help_text(["prune", "--method", "random", "--help"], capsys)
    assert out.index("usage:") < out.index("options of 'random'")  # after the usual help
    assert re.search(r"^\s+seed\s+int\s+0(\s|$)", out, re.M)
    assert re.search(r"^\s+rates\s+str\s+'0.5'", out, re.M)


@pytest.mark.parametrize("name", list_methods())
def test_every_methods_help_lists_every_option(name, capsys) -> None:
    out = help_text(["prune", f"--method={name}", "--help"], capsys)
    for f in dataclasses.fields(method_class(name).Options):
        if f.init:
            assert re.search(rf"^\s+{f.name}\s", out, re.M), f.name


def test_method_option_help_names_every_registered_method(capsys) -> None:
    text = " ".join(help_text(["prune", "--help"], capsys).split())
    assert "pruning method: " + " | ".join(list_methods()) in text


# --- prunekit list --------------------------------------------------------------------------------------


def listing(what: str, capsys) -> dict[str, str]:
    assert main(["list", what]) == 0
    lines = capsys.readouterr().out.splitlines()
    return {line.split()[0]: line.split(maxsplit=1)[1] if len(line.split()) > 1 else "" for line in lines}


def test_list_methods_has_every_method_with_a_description(capsys) -> None:
    rows = listing("methods", capsys)
    assert list(rows) == list_methods()
    assert all(rows.values()), rows


def test_list_models_and_datasets(capsys) -> None:
    models = listing("models", capsys)
    assert list(models) == list_models() and all(models.values())
    assert list(listing("datasets", capsys)) == list_datasets()


def test_list_presets_has_every_methods_presets(capsys) -> None:
    assert main(["list", "presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    expected = [
        (method, name, expression)
        for method in list_methods()
        for name, expression in getattr(method_class(method), "presets", {}).items()
    ]
    assert expected, "no method defines presets: this test checks nothing"
    assert [tuple(line.split(maxsplit=2)) for line in lines] == expected


def test_train_list_still_works(capsys) -> None:
    assert main(["train", "--list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in [*list_models(), *list_datasets()])


# --- how cli.py is written ------------------------------------------------------------------------------


def test_cli_names_no_particular_method() -> None:
    source = Path(prunekit.cli.__file__).read_text(encoding="utf-8")
    assert not re.findall(r"hrank|deephoyer|slimming|fpgm", source, re.I)


def test_building_the_parser_stays_light() -> None:
    # `prunekit --version`, usage errors and non-training commands do not pay for importing torch.
    code = "import sys; from prunekit.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "False"
