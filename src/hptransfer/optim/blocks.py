"""Blocking a matrix for Shampoo: ``max_preconditioner_dim`` splits each dimension into
near-equal parts, and blocks of equal shape are stacked, so that statistics, roots and
preconditioning run as batched matrix products over ``(count, block_rows, block_cols)``."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class BlockGrid:
    """Equal-shape blocks tiling ``mat[rows, cols]``: ``nr x nc`` blocks, stacked row-major."""

    rows: slice
    cols: slice
    nr: int
    nc: int

    @property
    def count(self) -> int:
        return self.nr * self.nc

    def gather(self, mat: Tensor) -> Tensor:
        """The blocks stacked into ``(count, block_rows, block_cols)`` (a view for one block)."""
        sub = mat[self.rows, self.cols]
        m, n = sub.shape[0] // self.nr, sub.shape[1] // self.nc
        return sub.view(self.nr, m, self.nc, n).permute(0, 2, 1, 3).reshape(self.count, m, n)

    def matrix(self, values_KxMxN: Tensor, dtype: torch.dtype) -> Tensor:
        """The inverse of `gather`: stacked blocks back to the ``mat[rows, cols]`` they tile,
        in ``dtype``."""
        _, m, n = values_KxMxN.shape
        if self.count == 1:
            return values_KxMxN.view(m, n).to(dtype)
        tiles = values_KxMxN.view(self.nr, self.nc, m, n).permute(0, 2, 1, 3)
        if type(values_KxMxN).__name__ == "DTensor":  # sharded (FSDP2): functional ops only
            return tiles.reshape(self.nr * m, self.nc * n).to(dtype)
        out = torch.empty(self.nr, m, self.nc, n, dtype=dtype, device=values_KxMxN.device)
        return out.copy_(tiles).view(self.nr * m, self.nc * n)  # layout and cast in one pass


def assemble(grids: tuple[BlockGrid, ...], parts: list[Tensor]) -> Tensor:
    """The matrix that ``grids`` (as `block_classes` orders them) tile, from each grid's part.
    Functional (no writes into slices), so it also works on FSDP2's sharded DTensors."""
    if len(parts) == 1:
        return parts[0]
    bands: list[list[Tensor]] = []
    for i, (grid, part) in enumerate(zip(grids, parts)):
        if i == 0 or grid.rows != grids[i - 1].rows:
            bands.append([])
        bands[-1].append(part)
    return torch.cat([torch.cat(band, dim=1) for band in bands], dim=0)


def _cuts(n: int, max_dim: int) -> list[tuple[slice, int]]:
    """``range(n)`` in ``ceil(n / max_dim)`` near-equal parts, the larger ones first, as at
    most two runs of equal parts: (slice covered, number of parts)."""
    k = max(1, math.ceil(n / max_dim))
    base, extra = divmod(n, k)
    runs = [(slice(0, extra * (base + 1)), extra), (slice(extra * (base + 1), n), k - extra)]
    return [(sl, parts) for sl, parts in runs if parts]


@functools.lru_cache(maxsize=256)
def block_classes(rows: int, cols: int, max_dim: int) -> tuple[BlockGrid, ...]:
    """The blocks of a ``rows x cols`` matrix, grouped by shape (at most four shapes)."""
    return tuple(
        BlockGrid(rs, cs, nr, nc)
        for rs, nr in _cuts(rows, max_dim)
        for cs, nc in _cuts(cols, max_dim)
    )
