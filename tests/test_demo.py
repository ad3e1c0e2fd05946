"""`prunekit demo` end to end on the embedded data, with the shortest schedule: the short version of
`prunekit compare` (every method with a demo schedule at one MAC budget)."""

import json

from prunekit.demo import DEMO_BUDGET, demo_methods, run_demo


def test_demo_compares_every_method_against_the_dense_model_at_one_budget(tmp_path) -> None:
    result = run_demo(tmp_path, epochs=1, finetune_epochs=1)
    assert not result.failed
    assert [r.method for r in result.rows] == list(demo_methods())
    assert {"l1", "fpgm", "random", "hrank", "deephoyer"} <= set(demo_methods())
    # LeNet-5: conv1 288k + conv2 1.6M + fc 405k MACs
    assert result.dense["macs"] == 2_293_000 and result.dense["params"] == 431_080
    for row in result.rows:
        assert abs(row.macs / result.dense["macs"] - DEMO_BUDGET) <= 0.02 * DEMO_BUDGET, row.method
        assert row.params < result.dense["params"] and set(row.latency) == {1, 64}, row.method
        assert 0 <= row.top1_last[0] <= 100
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "complete" and len(summary["rows"]) == len(result.rows)
    report = (tmp_path / "compare.md").read_text()
    assert "accuracy_vs_macs.png" in report and (tmp_path / "accuracy_vs_macs.png").is_file()
    assert (tmp_path / "compare.csv").is_file() and (tmp_path / "widths.png").is_file()
