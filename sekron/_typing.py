"""Type aliases shared across sekron."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

Shape = tuple[int, ...]
FactorShapes = tuple[Shape, ...]
Labels = tuple[str, ...]
Array = Any  # an array of any tensorly backend
RankSpec = None | int | Sequence[int] | Mapping[str, int]
PatternName = Literal["nested", "chain", "ring", "cp", "tucker"]
PATTERNS: tuple[str, ...] = ("nested", "chain", "ring", "cp", "tucker")
