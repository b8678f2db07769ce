"""The model zoo table: every variant's size, cost, stage channels and checkpoint layout."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from .resnet import build_resnet
from .variants import VARIANTS

__all__ = ["ZooRow", "model_zoo_rows", "format_zoo_table"]


@dataclass(frozen=True)
class ZooRow:
    """One line of the zoo: name, parameters (1000-class head), GMACs at `size`, C2-C5 channels, layout."""

    name: str
    params: int
    gmacs: float
    channels: Sequence[int]
    loads: str


def model_zoo_rows(*, names: Sequence[str] = tuple(VARIANTS), size: int = 224) -> List[ZooRow]:
    """Measure each variant on the meta device (no memory, no compute).

    Args:
        names: variants to list (default: the whole table).
        size: square input side for the MAC count.

    Returns:
        One `ZooRow` per name. MACs are torch's FLOP counter total / 2 (one multiply-add = 2 FLOPs):
        resnet50 at 224 gives 4.09 GMACs, the figure torchvision's table quotes as "4.09 GFLOPS".
    """
    rows = []
    for name in names:
        with torch.device("meta"):
            model = build_resnet(name).eval()
            with FlopCounterMode(display=False) as counter:
                model(torch.empty(1, 3, size, size))
        variant = VARIANTS[name]
        rows.append(ZooRow(
            name=name,
            params=sum(p.numel() for p in model.parameters()),
            gmacs=counter.get_total_flops() / 2e9,
            channels=variant.stage_channels,
            loads=variant.source,
        ))
    return rows


def format_zoo_table(rows: Sequence[ZooRow], *, size: int = 224) -> str:
    """A Markdown table of the rows (readable as plain text too)."""
    lines = [
        f"| model | params | GMACs @{size} | C2-C5 channels | loads checkpoints of |",
        "|---|---:|---:|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.name} | {r.params:,} | {r.gmacs:.2f} | {'/'.join(map(str, r.channels))} | {r.loads} |"
        )
    return "\n".join(lines)
