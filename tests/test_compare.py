"""`prunekit compare`: the table from hand-made rows, a tiny end-to-end compare, resume without rerunning
finished rows, and refusals before any work."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path

import pytest

from prunekit.compare import CompareSpec, parse_methods, parse_seeds, row_dir, run_compare
from prunekit.errors import ConfigError
from prunekit.measure.timing import LatencyStats
from prunekit.pipeline import DataSpec
from prunekit.report.method_comparison import COLUMNS, MethodRow, csv_text, table_rows
from prunekit.train import TrainConfig

DATA = DataSpec("synthetic", limit_train=192, limit_test=64, batch_size=64, options={"shape": (1, 28, 28)})
FT = TrainConfig.from_dict({"epochs": 1, "lr": 0.01, "batch_size": 64})
DENSE_TRAIN = TrainConfig.from_dict({"epochs": 1, "lr": 0.05, "batch_size": 64})


def _stats(*rounds: float) -> LatencyStats:
    return LatencyStats.of_samples(list(rounds), round_medians=list(rounds))


def test_table_values_from_hand_made_rows() -> None:
    dense = {"top1": 90.0, "params": 1000, "macs": 4000, "latency": {1: _stats(2.0, 2.0, 2.0).to_record()}}
    row = MethodRow(
        budget=0.5,
        method="l1",
        label="",
        seeds=(0, 1),
        params=400,
        macs=2000.0,
        macs_reached=0.5,
        top1_last=(88.5, 0.5),
        top1_best=(89.0, 0.25),
        top1_before=(70.0, 1.0),
        wall_time_s=12.4,
        latency={1: _stats(1.0, 1.0, 1.0)},
    )
    table = table_rows([row], dense, finetune_epochs=3)
    cells = dict(zip(COLUMNS, table[1], strict=True))
    assert cells["compression"] == "2.50×"  # 1000 / 400
    assert cells["MAC speed-up"] == "2.00×"  # 4000 / 2000
    assert cells["latency speed-up"] == "b1 2.00× (2.00–2.00×)"  # paired rounds 2/1 each
    assert cells["top-1 best"] == "89.00 ± 0.25" and cells["top-1 last"] == "88.50 ± 0.50"
    assert cells["Δ top-1 (last)"] == "-1.50"
    assert cells["budget"] == "0.5 (reached 0.500)" and cells["FT epochs"] == "3"
    assert cells["wall time (s)"] == "12" and cells["seeds"] == "0,1"
    parsed = list(csv.reader(io.StringIO(csv_text(table))))
    assert (
        parsed[0] == COLUMNS
        and parsed[1][1] == "dense"
        and parsed[2][COLUMNS.index("compression")] == "2.50×"
    )


def test_a_speedup_inside_the_noise_is_shown_as_such() -> None:
    dense = {"top1": None, "params": 10, "macs": 10, "latency": {1: _stats(1.0, 1.3, 0.9).to_record()}}
    row = MethodRow(
        0.5, "x", "", (0,), 5, 5.0, None, (1, 0), (1, 0), (1, 0), math.nan, {1: _stats(1.1, 1.0, 1.0)}
    )
    cell = dict(zip(COLUMNS, table_rows([row], dense, 0)[1], strict=True))["latency speed-up"]
    assert cell.startswith("b1 ≈1× (noise: 0.90–1.30×)")


def test_bad_input_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    cases = [
        (CompareSpec(("l1",), (1.5,), FT), r"--budget 1.5 must be a fraction of the dense MACs in \(0, 1\)"),
        (CompareSpec(("l1", "l1"), (0.5,), FT), "names a method twice"),
        (CompareSpec(("l1",), (0.5,), FT, seeds=()), "distinct seeds"),
        (CompareSpec(("nope",), (0.5,), FT), "unknown method 'nope'"),
        (CompareSpec(("tpp",), (0.5,), FT, sparsify_epochs=1), r"cannot shorten 'tpp': .* \(90,001 steps\)"),
    ]
    for spec, message in cases:
        with pytest.raises(ConfigError, match=message):
            run_compare("lenet5", DATA, spec, out, train=DENSE_TRAIN)
        assert not out.exists()
    with pytest.raises(ConfigError, match="neither a model file nor a zoo architecture"):
        run_compare("no-such-arch", DATA, CompareSpec(("l1",), (0.5,), FT), out, train=DENSE_TRAIN)
    with pytest.raises(ConfigError, match="give --epochs"):
        run_compare("lenet5", DATA, CompareSpec(("l1",), (0.5,), FT), out)
    assert not out.exists()
    assert parse_seeds("3") == (0, 1, 2) and parse_seeds("4,7") == (4, 7)
    with pytest.raises(ConfigError, match="--seeds must be a count"):
        parse_seeds("two")
    assert "l1" in parse_methods("all") and "tp-magnitude" in parse_methods("all")


def test_compare_end_to_end_then_resume_reruns_only_the_unfinished_row(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    spec = CompareSpec(("l1", "random"), (0.5,), FT, seeds=(0, 1), latency_batches=(1,))
    result = run_compare(
        "lenet5", DATA, spec, out, train=DENSE_TRAIN, device="cpu", progress=False, say=lambda _: None
    )
    assert not result.failed and [(r.method, r.seeds) for r in result.rows] == [
        ("l1", (0, 1)),
        ("random", (0, 1)),
    ]
    summary = json.loads((out / "summary.json").read_text())
    dense_macs = summary["dense"]["macs"]
    for r in summary["rows"]:
        assert abs(r["macs"] / dense_macs - 0.5) <= 0.02 * 0.5  # the same budget for every method
        assert r["macs_reached"] == pytest.approx(r["macs"] / dense_macs)
    table = (out / "compare.md").read_text()
    assert "| 0.5 (reached" in table and "| l1 |" in table and "| random |" in table
    for name in ("compare.csv", "accuracy_vs_macs.png", "accuracy_vs_latency.png", "widths.png"):
        assert (out / name).is_file(), name

    # Interrupt: one row left running, the others finished. Resume reruns only that row.
    unfinished = row_dir(out, 0.5, "random", 1)
    (unfinished / "summary.json").write_text(json.dumps({"status": "running"}))
    kept = {p: p.stat().st_mtime_ns for p in (row_dir(out, 0.5, "l1", 0) / "model.safetensors",
                                              row_dir(out, 0.5, "random", 0) / "model.safetensors",
                                              out / "dense" / "model.safetensors")}  # fmt: skip
    quiet = {"device": "cpu", "progress": False, "say": lambda _: None}
    with pytest.raises(ConfigError, match="already holds a run; choose another --out, pass --resume"):
        run_compare("lenet5", DATA, spec, out, train=DENSE_TRAIN, **quiet)
    other_seeds = CompareSpec(("l1", "random"), (0.5,), FT, seeds=(0, 2), latency_batches=(1,))
    with pytest.raises(ConfigError, match=r"seeds: \[0, 1\] in the run, \[0, 2\] now"):
        run_compare("lenet5", DATA, other_seeds, out, train=DENSE_TRAIN, resume=True, **quiet)
    said: list[str] = []
    run_compare("lenet5", DATA, spec, out, train=DENSE_TRAIN, device="cpu", progress=False, say=said.append,
                resume=True)  # fmt: skip
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    assert "random at 0.5× MACs, seed 1" in said and sum("finished earlier" in s for s in said) == 4
    assert json.loads((unfinished / "summary.json").read_text())["status"] == "complete"
    assert os.path.isfile(unfinished / "model.safetensors")


def test_the_cli_refuses_bad_input_in_one_line_and_writes_nothing(tmp_path: Path, capsys) -> None:
    from prunekit.cli import main

    out = tmp_path / "cmp"
    base = ["compare", "--model", "lenet5", "--epochs", "1", "--data", "synthetic", "--out", str(out)]
    for extra, message in (
        (["--budget", "2"], "--budget 2 must be a fraction of the dense MACs in (0, 1)"),
        (["--methods", "l1,nope"], "unknown method 'nope'"),
        (["--seeds", "0"], "--seeds must be at least 1"),
    ):
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("prunekit: error:") and message in err and "Traceback" not in err
        assert not out.exists()
    assert main(["compare", "--model", str(tmp_path / "missing.safetensors"), "--out", str(out)]) == 2
    assert "dense model file" in capsys.readouterr().err and not out.exists()
    from prunekit import model_file
    from prunekit.models import create

    dense = model_file.save(create("lenet5"), tmp_path / "dense.safetensors", info={"dataset": "synthetic"})
    assert main(["compare", "--model", str(dense), "--epochs", "3", "--out", str(out)]) == 2
    assert "--epochs and --shortcut only apply when --model names an architecture" in capsys.readouterr().err
    assert main(["compare", "--model", str(dense), "--lr", "0.3", "--out", str(out)]) == 2
    assert "use --finetune-lr" in capsys.readouterr().err
    assert not out.exists()


def test_compare_resume_from_the_command_line_reaches_compare_s_own_checks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # compare has --resume but no per-option resume parser: main() must leave the check to run_compare
    # (it used to fail with an internal error before reaching it).
    from prunekit.cli import main

    out = tmp_path / "never-ran"
    argv = ["compare", "--model", "lenet5", "--epochs", "1", "--data", "synthetic", "--out", str(out)]
    assert main([*argv, "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("prunekit: error:") and "internal error" not in err
