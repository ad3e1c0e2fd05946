"""Side-by-side comparison of models: accuracy, params, MACs and measured latency."""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.table import Table

MAC_CONVENTION = (
    "MACs = conv + linear multiply-accumulates per image; params = conv + linear weights and biases"
)


@dataclass
class ComparisonRow:
    name: str
    top1: float | None  # percent
    params: int
    macs: int
    latency_ms: dict[int, float] = field(default_factory=dict)  # batch size → median ms (deployed form)
    note: str = ""


def _ratio(base: float, value: float) -> str:
    return f"{base / value:.2f}×" if value > 0 else "–"


def _columns(rows: list[ComparisonRow]) -> tuple[list[str], list[list[str]]]:
    base = rows[0]
    batches = sorted({b for r in rows for b in r.latency_ms})
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
            ms = r.latency_ms.get(b)
            base_ms = base.latency_ms.get(b)
            cells += [
                "–" if ms is None else f"{ms:.3f}",
                "–" if not (ms and base_ms) else _ratio(base_ms, ms),
            ]
        cells.append(r.note)
        body.append(cells)
    return head, body


def comparison_table(rows: list[ComparisonRow], title: str = "") -> Table:
    """A rich table; the first row is the reference for Δ and speed-ups."""
    head, body = _columns(rows)
    table = Table(title=title or None, caption=MAC_CONVENTION)
    for i, h in enumerate(head):
        table.add_column(h, justify="left" if i in (0, len(head) - 1) else "right")
    for cells in body:
        table.add_row(*cells)
    return table


def comparison_markdown(rows: list[ComparisonRow]) -> str:
    head, body = _columns(rows)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    lines.append("")
    lines.append(
        f"_{MAC_CONVENTION}; latency = median of interleaved repeats of the deployed (BN-folded, "
        "frozen) model._"
    )
    return "\n".join(lines) + "\n"
