"""Run records → folders, tables and plots."""

from prunekit.report.compare import row_of, rows_of
from prunekit.report.plots import plot_accuracy_vs_macs, plot_curves, plot_widths
from prunekit.report.run_folder import RunFolder
from prunekit.report.tables import ComparisonRow, comparison_markdown, comparison_table

__all__ = [
    "ComparisonRow",
    "RunFolder",
    "comparison_markdown",
    "comparison_table",
    "plot_accuracy_vs_macs",
    "plot_curves",
    "plot_widths",
    "row_of",
    "rows_of",
]
