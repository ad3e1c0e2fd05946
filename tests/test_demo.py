"""`prunekit demo` end to end on the embedded data, with the shortest schedule."""

import json

from prunekit.demo import demo_methods, run_demo


def test_demo_compares_every_method_against_the_dense_model(tmp_path) -> None:
    rows = run_demo(tmp_path, epochs=1, finetune_epochs=1)
    assert [r.name for r in rows] == ["LeNet-5 dense"] + [label for label, *_ in demo_methods()]
    dense, pruned = rows[0], rows[1:]
    assert dense.macs == 2_293_000 and dense.params == 431_080  # LeNet-5 (conv1 288k + conv2 1.6M + fc 405k)
    for row in pruned:
        assert row.macs < dense.macs and row.params < dense.params, row.name
        assert set(row.latency_ms) == {1, 64} and 0 <= row.top1 <= 100
    one_shot = [r for r in pruned if r.name.endswith("50%") and not r.name.startswith("hrank")]
    assert len({(r.macs, r.params) for r in one_shot}) == 1  # same ratio, same widths, whatever the criterion
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert len(summary["rows"]) == len(rows)
    report = (tmp_path / "report.md").read_text()
    assert "accuracy_vs_macs.png" in report and (tmp_path / "accuracy_vs_macs.png").is_file()
