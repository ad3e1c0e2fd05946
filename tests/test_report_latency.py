"""Honest latency in reports: spread on every latency, speed-ups inside the noise shown as such, models
re-timed together, and plots that stay readable. Timings here are deterministic fakes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from prunekit import model_file
from prunekit.cli import main
from prunekit.errors import ConfigError
from prunekit.measure.timing import LatencyResult, LatencyStats, speedup
from prunekit.models import create
from prunekit.report import ComparisonRow, RunFolder, comparison_markdown
from prunekit.report.plots import CostPoint, accuracy_cost_figure, curves_figure, widths_figure

# A model with the dense architecture once came out "1.47× faster" than the dense model: quartiles that
# wide make 1.47 the ratio of the medians and nothing more.
DENSE = [16.0, 8.0, 11.0, 8.0, 16.0]  # sorted 8 8 11 16 16: p25 8, median 11, p75 16
NOISY = [12.0, 6.0, 7.5, 12.0, 6.0]  # sorted 6 6 7.5 12 12: p25 6, median 7.5, p75 12
FAST = [5.0, 4.0, 5.5, 4.5, 6.0]  # sorted 4 4.5 5 5.5 6: p25 4.5, median 5, p75 5.5
# One sample per interleaving round, the machine's load drifting between rounds (it hits every model of a
# round alike): the copy's median ratio is 12 / 8.2 = 1.46, but round by round it is 0.67–1.50; the
# pruned model is 1.25× faster in every round, although its quartiles overlap the dense ones.
ROUND_DENSE = [10.0, 20.0, 12.0, 24.0, 10.0]
ROUND_COPY = [8.0, 30.0, 8.2, 16.0, 6.8]
ROUND_PRUNED = [8.0, 16.0, 9.6, 19.2, 8.0]


def test_latency_stats_are_the_quartiles_of_the_samples() -> None:
    s = LatencyStats.of_samples([4.0, 1.0, 3.0, 2.0, 10.0])
    assert (s.median_ms, s.p25_ms, s.p75_ms, s.min_ms, s.max_ms, s.samples) == (3.0, 2.0, 4.0, 1.0, 10.0, 5)
    # Four samples: quartiles interpolate between neighbours (positions 0.75 and 2.25 of 1 2 3 4).
    s = LatencyStats.of_samples([1.0, 2.0, 3.0, 4.0])
    assert (s.p25_ms, s.median_ms, s.p75_ms) == (1.75, 2.5, 3.25)
    assert LatencyStats.of_record(s.to_record()) == s
    with pytest.raises(ConfigError, match="at least one sample"):
        LatencyStats.of_samples([])


def test_speedup_inside_the_noise_is_shown_as_such() -> None:
    noisy = speedup(LatencyStats.of_samples(DENSE), LatencyStats.of_samples(NOISY))
    assert noisy.ratio == pytest.approx(11 / 7.5)  # the 1.47× of the old report
    assert (noisy.low, noisy.high) == (pytest.approx(8 / 12), pytest.approx(16 / 6))
    assert noisy.within_noise and str(noisy) == "≈1× (noise: 0.67–2.67×)"
    real = speedup(LatencyStats.of_samples(DENSE), LatencyStats.of_samples(FAST))
    assert not real.within_noise
    assert str(real) == "2.20× (1.45–3.56×)"  # 11/5, 8/5.5, 16/4.5
    slower = speedup(LatencyStats.of_samples(FAST), LatencyStats.of_samples(DENSE))
    assert not slower.within_noise and slower.high < 1


def _rounds(samples: list[float]) -> LatencyStats:
    return LatencyResult(0.0, 0.0, 0.0, tuple(samples), 1, 1, "freeze", "cpu", rounds=len(samples)).stats


def test_models_timed_together_are_compared_round_by_round() -> None:
    dense, copy, pruned = _rounds(ROUND_DENSE), _rounds(ROUND_COPY), _rounds(ROUND_PRUNED)
    assert dense.round_medians == tuple(ROUND_DENSE)
    assert str(speedup(dense, copy, paired=True)) == "≈1× (noise: 0.67–1.50×)"
    assert str(speedup(dense, pruned, paired=True)) == "1.25× (1.25–1.25×)"
    # The same numbers from separate runs cannot be paired: quartiles 10–20 against 8–16.
    assert str(speedup(dense, pruned)) == "≈1× (noise: 0.62–2.50×)"
    # Rounds of two samples each: the round medians are the medians of consecutive pairs.
    two = LatencyResult(0.0, 0.0, 0.0, (1.0, 3.0, 10.0, 20.0), 1, 1, "raw", "cpu", rounds=2).stats
    assert two.round_medians == (2.0, 15.0)


def _cells(md: str, name: str) -> list[str]:
    line = next(line for line in md.splitlines() if line.startswith(f"| {name} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_table_shows_median_with_quartiles_and_noise_aware_speedups() -> None:
    def row(name: str, macs: int, samples: list[float]) -> ComparisonRow:
        stats = LatencyStats.of_samples(samples)
        return ComparisonRow(name, 90.0, 1000, macs, {1: stats.median_ms}, "", {1: stats})

    md = comparison_markdown(
        [row("dense", 4_000_000, DENSE), row("same", 4_000_000, NOISY), row("l1", 1_000_000, FAST)]
    )
    assert _cells(md, "dense")[6:8] == ["11.000 (8.000–16.000)", "1.00×"]
    assert _cells(md, "same")[6:8] == ["7.500 (6.000–12.000)", "≈1× (noise: 0.67–2.67×)"]
    assert _cells(md, "l1")[6:8] == ["5.000 (4.500–5.500)", "2.20× (1.45–3.56×)"]
    assert "median (p25–p75)" in md and "interleaved" in md


def test_medians_without_spread_flag_a_same_architecture_speedup() -> None:
    rows = [
        ComparisonRow("dense", 93.0, 850_000, 125_000_000, {1: 11.0}),
        ComparisonRow("dense-again", 93.1, 850_000, 125_000_000, {1: 7.5}),
        ComparisonRow("l1", 92.0, 400_000, 60_000_000, {1: 7.5}),
    ]
    md = comparison_markdown(rows, timing="separate")
    assert _cells(md, "dense-again")[7] == "1.47×*"
    assert _cells(md, "l1")[7] == "1.47×"  # fewer MACs: a speed-up is possible, no mark
    assert "same MACs and params as the reference" in md and "_separate._" in md


def _write_run(folder: Path, model: torch.nn.Module, top1: float, latency: dict[str, float]) -> None:
    run = RunFolder(folder)
    model_file.save(model, run.file("model.safetensors"), info={"input_shape": [1, 28, 28]})
    run.write_summary(
        {"kind": "train", "top1": top1, "params": 431_080, "macs": 2_293_000, "latency_ms": latency}
    )


def test_report_retimes_all_models_interleaved_in_one_call(tmp_path, monkeypatch, capsys) -> None:
    calls = []

    def fake_compare_latency(models, shape, *, batch_size, threads, repeats, rounds, warmup):
        calls.append((sorted(models), tuple(shape), batch_size, threads, rounds))
        samples = [ROUND_DENSE, ROUND_COPY, ROUND_PRUNED]
        return {
            name: LatencyResult(0, 0, 0, tuple(samples[int(name)]), batch_size, threads, "freeze", "cpu", 5)
            for name in models
        }

    monkeypatch.setattr("prunekit.report.retiming.compare_latency", fake_compare_latency)
    # The recorded figures (separate processes) say 1.47×; the re-timing decides.
    _write_run(tmp_path / "dense", create("lenet5"), 99.0, {"1": 11.0})
    _write_run(tmp_path / "copy", create("lenet5"), 99.1, {"1": 7.5})
    _write_run(tmp_path / "pruned", create("lenet5"), 98.9, {"1": 9.0})
    runs = [str(tmp_path / "dense"), str(tmp_path / "copy"), str(tmp_path / "pruned")]
    assert main(["report", *runs, "--out", str(tmp_path / "cmp"), "--repeats", "5"]) == 0
    assert calls == [(["0", "1", "2"], (1, 28, 28), 1, 1, 10)]  # all models in one interleaved timing
    md = (tmp_path / "cmp" / "report.md").read_text()
    assert _cells(md, "copy")[6:8] == ["8.200 (8.000–16.000)", "≈1× (noise: 0.67–1.50×)"]
    assert _cells(md, "pruned")[6:8] == ["9.600 (8.000–16.000)", "1.25× (1.25–1.25×)"]
    assert "re-timed now, all models interleaved in one process" in md
    assert "within one interleaving round" in md
    assert (tmp_path / "cmp" / "accuracy_vs_cost.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    # --no-measure keeps each run's own figure and says where it came from; the summaries give all three
    # the same MACs and params, so their ratios are marked as noise.
    assert main(["report", *runs, "--no-measure", "--out", str(tmp_path / "cmp2")]) == 0
    md = (tmp_path / "cmp2" / "report.md").read_text()
    assert _cells(md, "copy")[6:8] == ["7.500", "1.47×*"] and "separate processes" in md
    assert _cells(md, "pruned")[6:8] == ["9.000", "1.22×*"]
    assert len(calls) == 1


def test_report_measure_needs_the_model_files_and_the_folders(tmp_path, capsys) -> None:
    RunFolder(tmp_path / "a").write_summary(
        {"kind": "train", "top1": 90.0, "params": 1, "macs": 1, "latency_ms": {"1": 2.0}}
    )
    assert main(["report", str(tmp_path / "a"), "--measure"]) == 2
    assert "missing: " + str(tmp_path / "a" / "model.safetensors") in capsys.readouterr().err
    assert main(["report", str(tmp_path / "a")]) == 0  # no model file: recorded figures, labelled
    assert "separate processes" in capsys.readouterr().out.replace("\n", " ")
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "nowhere").exists()


def test_prune_row_notes_its_own_interleaved_dense_speedup(tmp_path) -> None:
    from prunekit.report import row_of

    dense, fast = LatencyStats.of_samples(DENSE), LatencyStats.of_samples(FAST)
    summary = {
        "kind": "prune",
        "method": "l1",
        "dense": {"latency_ms": {"1": 11.0}, "latency_stats": {"1": dense.to_record()}},
        "pruned": {
            "top1": 91.0,
            "top1_before_finetune": 80.0,
            "params": 10,
            "macs": 10,
            "latency_ms": {"1": 5.0},
            "latency_stats": {"1": fast.to_record()},
        },
    }
    RunFolder(tmp_path / "p").write_summary(summary)
    row = row_of(tmp_path / "p")
    assert row.latency_stats == {1: fast}
    assert (
        row.note == "l1, 80.00 % before fine-tuning; vs its own dense, timed together: b1 2.20× (1.45–3.56×)"
    )
    del summary["dense"]["latency_stats"], summary["pruned"]["latency_stats"]
    (tmp_path / "p" / "summary.json").write_text(json.dumps(summary))
    assert row_of(tmp_path / "p").note.endswith("timed together: b1 2.20×")


def _boxes(fig, texts):
    renderer = fig.canvas.get_renderer()
    return [t.get_window_extent(renderer) for t in texts]


def test_labels_of_coinciding_points_do_not_overlap() -> None:
    stats = LatencyStats.of_samples(FAST)
    points = [CostPoint.of(f"model-{i}", 1e6, 90.0, stats.median_ms, stats) for i in range(5)]
    fig = accuracy_cost_figure(points, timing="re-timed")
    texts = [t for ax in fig.axes for t in ax.texts]
    assert len(texts) == 10  # five labels on each of the two panels
    for ax in fig.axes:
        boxes = _boxes(fig, ax.texts)
        assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    assert [ax.get_title() for ax in fig.axes] == ["accuracy vs MACs", "accuracy vs latency"]


def test_curves_start_before_finetuning_on_whole_epoch_ticks() -> None:
    hist = [{"epoch": e, "train_loss": 1.0 / e, "val_top1": 80.0 + e} for e in (1, 2, 3)]
    fig = curves_figure(hist, start_top1=42.0)
    ax_acc = fig.axes[1]
    start = next(line for line in ax_acc.get_lines() if line.get_label() == "before fine-tuning")
    assert list(start.get_xdata()) == [0] and list(start.get_ydata()) == [42.0]
    fig.canvas.draw()
    ticks = [t for t in ax_acc.get_xticks() if ax_acc.get_xlim()[0] <= t <= ax_acc.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)


def test_width_bars_name_every_layer_on_the_axis_in_network_order() -> None:
    names = [f"layer{s}.{b}.conv{c}" for s in (1, 2, 3) for b in range(9) for c in (1, 2)]  # 54 layers
    fig = widths_figure({n: 16 for n in names}, {n: 8 for n in names})
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == names
    assert ax.get_ylim()[0] > ax.get_ylim()[1]  # first layer at the top
    fig.canvas.draw()
    boxes = _boxes(fig, ax.get_yticklabels())
    assert not any(a.overlaps(b) for a, b in zip(boxes, boxes[1:], strict=False))
