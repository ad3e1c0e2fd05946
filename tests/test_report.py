import json

import pytest

from prunekit.errors import ConfigError
from prunekit.report import (
    ComparisonRow,
    RunFolder,
    comparison_markdown,
    plot_accuracy_vs_macs,
    plot_curves,
    plot_widths,
)


def test_comparison_markdown_ratios_and_deltas() -> None:
    rows = [
        ComparisonRow("dense", 93.0, 1000, 400_000_000, {1: 8.0, 64: 200.0}),
        ComparisonRow("pruned", 92.5, 500, 100_000_000, {1: 4.0, 64: 80.0}),
    ]
    md = comparison_markdown(rows)
    pruned_line = next(line for line in md.splitlines() if line.startswith("| pruned"))
    cells = [c.strip() for c in pruned_line.strip("|").split("|")]
    # model, top1, Δ, params, MACs, MAC speed-up, lat b1, speed-up b1, lat b64, speed-up b64, note
    assert cells[:6] == ["pruned", "92.50", "-0.50", "500", "100.00M", "4.00×"]
    assert cells[6:10] == ["4.000", "2.00×", "80.000", "2.50×"]
    assert "conv + linear multiply-accumulates" in md


def test_run_folder_writes_atomically_and_reads_back(tmp_path) -> None:
    run = RunFolder(tmp_path / "run")
    run.write_config({"lr": 0.1, "milestones": (50, 100), "root": tmp_path})
    run.write_summary({"top1": 91.5})
    assert json.loads(run.file("summary.json").read_text()) == {"top1": 91.5}
    assert "milestones:\n- 50\n- 100" in run.file("config.yaml").read_text()
    assert sorted(p.name for p in run.path.iterdir()) == ["config.yaml", "summary.json"]  # no temp files left
    run.file("log.jsonl").write_text('{"kind": "epoch", "epoch": 1}\n{"kind": "epoch", "ep')  # torn last line
    assert run.read_log() == [{"kind": "epoch", "epoch": 1}]


def test_run_folder_refuses_a_file_and_a_nonempty_folder(tmp_path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        RunFolder(tmp_path / "f")
    with pytest.raises(ConfigError, match="not empty"):
        RunFolder(tmp_path, exist_ok=False)
    with pytest.raises(ConfigError, match="no summary.json"):
        RunFolder(tmp_path / "new").read_summary()


def test_plots_are_png_files(tmp_path) -> None:
    hist = [
        {"epoch": 1, "train_loss": 2.0, "val_loss": 1.5, "train_top1": 30, "val_top1": 40},
        {"epoch": 2, "train_loss": 1.0, "val_loss": 1.1, "train_top1": 60, "val_top1": 55},
    ]
    paths = [
        plot_curves(hist, tmp_path / "c.png"),
        plot_accuracy_vs_macs([("a", 1e6, 90.0), ("b", 5e5, 89.0)], tmp_path / "a.png"),
        plot_widths({"l1": 16, "l2": 32}, {"l1": 8, "l2": 30}, tmp_path / "w.png"),
    ]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_rows_from_run_folders(tmp_path, capsys) -> None:
    from prunekit.cli import main
    from prunekit.report import rows_of

    RunFolder(tmp_path / "dense").write_summary(
        {"kind": "train", "top1": 90.0, "params": 1000, "macs": 4_000_000, "latency_ms": {"1": 2.0}}
    )
    RunFolder(tmp_path / "l1").write_summary(
        {
            "kind": "prune",
            "method": "l1",
            "pruned": {
                "top1": 89.0,
                "top1_before_finetune": 70.0,
                "params": 300,
                "macs": 1_000_000,
                "latency_ms": {"1": 1.0},
            },
        }
    )
    dense, l1 = rows_of([tmp_path / "dense", tmp_path / "l1"])
    assert (dense.name, dense.top1, dense.latency_ms) == ("dense", 90.0, {1: 2.0})
    assert (l1.macs, l1.note) == (1_000_000, "l1, 70.00 % before fine-tuning")
    assert (
        main(["report", str(tmp_path / "dense"), str(tmp_path / "l1"), "--out", str(tmp_path / "cmp")]) == 0
    )
    md = (tmp_path / "cmp" / "report.md").read_text()
    assert "| l1 | 89.00 | -1.00 | 300 | 1.00M | 4.00× | 1.000 | 2.00× |" in md
    import csv

    table = list(csv.reader((tmp_path / "cmp" / "report.csv").read_text().splitlines()))
    assert table[2][:8] == ["l1", "89.00", "-1.00", "300", "1.00M", "4.00×", "1.000", "2.00×"]
    assert len({len(row) for row in table}) == 1  # header and rows: one column each
    RunFolder(tmp_path / "odd").write_summary({"kind": "demo"})
    assert main(["report", str(tmp_path / "odd")]) == 2
    assert "cannot be compared" in capsys.readouterr().err
