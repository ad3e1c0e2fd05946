"""Side-by-side comparison of models: accuracy, params, MACs and measured latency with its spread."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

from rich.table import Table

from prunekit.measure.timing import LatencyStats, speedup

MAC_CONVENTION = (
    "MACs = conv + linear multiply-accumulates per image; params = conv + linear weights and biases"
)
# How the latencies of one table were taken; the reader needs it to know which ratios mean anything.
INTERLEAVED = "latency = median of interleaved repeats of the deployed (BN-folded, frozen) model"
SEPARATE = (
    "latency as recorded by each run, timed in separate processes at different times: ratios between "
    "runs include the machine's load at each time; re-time them together with `prunekit report --measure`"
)
SAME_COST_MARK = "*"
SAME_COST_NOTE = (
    f"{SAME_COST_MARK} same MACs and params as the reference: a latency difference between separately "
    "timed runs is timing noise, not a speed-up"
)


@dataclass
class ComparisonRow:
    name: str
    top1: float | None  # percent
    params: int
    macs: int
    latency_ms: dict[int, float] = field(default_factory=dict)  # batch size → median ms (deployed form)
    note: str = ""
    # batch size → median and spread; rows that have it show the spread and noise-aware speed-ups.
    latency_stats: dict[int, LatencyStats] = field(default_factory=dict)


def _ratio(base: float, value: float) -> str:
    return f"{base / value:.2f}×" if value > 0 else "–"


def _latency_cell(r: ComparisonRow, b: int) -> str:
    stats = r.latency_stats.get(b)
    if stats is not None:
        return f"{stats.median_ms:.3f} ({stats.p25_ms:.3f}–{stats.p75_ms:.3f})"
    ms = r.latency_ms.get(b)
    return "–" if ms is None else f"{ms:.3f}"


def _speedup_cell(base: ComparisonRow, r: ComparisonRow, b: int, paired: bool) -> str:
    base_stats, stats = base.latency_stats.get(b), r.latency_stats.get(b)
    if base_stats is not None and stats is not None:
        return str(speedup(base_stats, stats, paired=paired)) if r is not base else "1.00×"
    ms, base_ms = r.latency_ms.get(b), base.latency_ms.get(b)
    if not (ms and base_ms):
        return "–"
    same_cost = r is not base and (r.macs, r.params) == (base.macs, base.params)
    return _ratio(base_ms, ms) + (SAME_COST_MARK if same_cost else "")


def _columns(rows: list[ComparisonRow], paired: bool = False) -> tuple[list[str], list[list[str]]]:
    base = rows[0]
    batches = sorted({b for r in rows for b in (*r.latency_ms, *r.latency_stats)})
    head = ["model", "top-1 %", "Δ top-1", "params", "MACs", "MAC speed-up"]
    for b in batches:
        head += [f"latency b{b} (ms)", f"speed-up b{b}"]
    head.append("note")
    body = []
    for r in rows:
        delta = "" if r.top1 is None or base.top1 is None or r is base else f"{r.top1 - base.top1:+.2f}"
        cells = [
            r.name,
            "–" if r.top1 is None else f"{r.top1:.2f}",
            delta,
            f"{r.params:,}",
            f"{r.macs / 1e6:.2f}M",
            _ratio(base.macs, r.macs),
        ]
        for b in batches:
            cells += [_latency_cell(r, b), _speedup_cell(base, r, b, paired)]
        cells.append(r.note)
        body.append(cells)
    return head, body


def _footnotes(rows: list[ComparisonRow], timing: str | None, paired: bool) -> list[str]:
    notes = [MAC_CONVENTION, timing or INTERLEAVED]
    if any(r.latency_stats for r in rows):
        rule = (
            "the smallest–largest ratio of the two models within one interleaving round"
            if paired
            else "reference p25 / model p75 to reference p75 / model p25"
        )
        notes.append(
            f"latency cells: median (p25–p75) ms; speed-up ranges: {rule}; a speed-up whose range holds "
            "1× is shown as ≈1× (within the timing noise)"
        )
    body = _columns(rows, paired)[1]
    if any(cell.endswith(SAME_COST_MARK) for cells in body for cell in cells[6:-1]):
        notes.append(SAME_COST_NOTE)
    return notes


def comparison_table(
    rows: list[ComparisonRow], title: str = "", timing: str | None = None, paired: bool = False
) -> Table:
    """A rich table; the first row is the reference for Δ and speed-ups. `timing` says how the latencies
    were taken (default: interleaved in one process); `paired`: all rows' latencies come from one
    interleaved timing, so speed-ups compare them round by round."""
    head, body = _columns(rows, paired)
    table = Table(title=title or None, caption="\n".join(_footnotes(rows, timing, paired)))
    for i, h in enumerate(head):
        table.add_column(h, justify="left" if i in (0, len(head) - 1) else "right")
    for cells in body:
        table.add_row(*cells)
    return table


def comparison_markdown(rows: list[ComparisonRow], timing: str | None = None, paired: bool = False) -> str:
    head, body = _columns(rows, paired)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    lines.append("")
    lines += [f"_{note}._  " for note in _footnotes(rows, timing, paired)]
    return "\n".join(lines) + "\n"


def comparison_csv(rows: list[ComparisonRow], paired: bool = False) -> str:
    """The same table as `comparison_markdown`, as CSV (one header row, the cells as shown)."""
    head, body = _columns(rows, paired)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(head)
    writer.writerows(body)
    return buffer.getvalue()
