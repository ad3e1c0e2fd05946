"""Run records → folders, tables and plots."""

from prunekit.report.compare import model_file_of, row_of, rows_of
from prunekit.report.plots import (
    CostPoint,
    plot_accuracy_vs_cost,
    plot_accuracy_vs_macs,
    plot_curves,
    plot_widths,
)
from prunekit.report.retiming import Timing, model_files_present, retime
from prunekit.report.run_folder import RunFolder
from prunekit.report.tables import (
    INTERLEAVED,
    SEPARATE,
    ComparisonRow,
    comparison_csv,
    comparison_markdown,
    comparison_table,
)

__all__ = [
    "INTERLEAVED",
    "SEPARATE",
    "ComparisonRow",
    "CostPoint",
    "RunFolder",
    "Timing",
    "comparison_csv",
    "comparison_markdown",
    "comparison_table",
    "model_file_of",
    "model_files_present",
    "plot_accuracy_vs_cost",
    "plot_accuracy_vs_macs",
    "plot_curves",
    "plot_widths",
    "retime",
    "row_of",
    "rows_of",
]
