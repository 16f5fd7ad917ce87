"""The list that :func:`sekron.search` returns: prints as a table, converts to pandas."""

from __future__ import annotations

from typing import Any


class Candidates(list[Any]):
    """A plain list of :class:`sekron.Candidate`, best first, that prints as a table.

    ``to_pandas()`` gives a DataFrame (pandas is imported lazily).

    Examples
    --------
    >>> import numpy as np, sekron
    >>> W = np.random.default_rng(0).standard_normal((8, 8))
    >>> found = sekron.search(W, ratio=2, n_factors=[2], patterns=["nested"], baselines=[])
    >>> print(str(found).splitlines()[0].split())
    ['#', 'pattern', 'factor_shapes', 'rank', 'params', 'compression', 'error', 'macs', 'baseline']
    """

    _COLUMNS = ("pattern", "factor_shapes", "rank", "params", "compression", "error", "macs", "baseline")

    def rows(self) -> list[dict[str, Any]]:
        """One dict per candidate with the table's columns."""
        return [{"pattern": c.pattern, "factor_shapes": c.structure.factor_shapes, "rank": dict(c.rank),
                 "params": c.params, "compression": c.compression, "error": c.error, "macs": c.macs,
                 "baseline": c.baseline} for c in self]

    def to_pandas(self) -> Any:
        """A ``pandas.DataFrame`` with one row per candidate (needs pandas)."""
        try:
            import pandas as pd
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("to_pandas needs pandas: pip install pandas") from exc
        return pd.DataFrame(self.rows(), columns=list(self._COLUMNS))

    def __str__(self) -> str:
        cells = [[str(i)] + [_fmt(r[c]) for c in self._COLUMNS] for i, r in enumerate(self.rows())]
        head = ["#", *self._COLUMNS]
        widths = [max(len(x) for x in col) for col in zip(head, *cells)]
        lines = ["  ".join(x.ljust(w) for x, w in zip(row, widths)).rstrip() for row in [head, *cells]]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return str(self) if self else "Candidates([])"

    def _repr_html_(self) -> str:
        return str(self.to_pandas()._repr_html_()) if self else "Candidates([])"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, tuple):
        return "|".join("x".join(str(a) for a in s) for s in value)
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return str(value)
