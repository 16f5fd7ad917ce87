"""The report of :func:`sekron.torch.compress`: a list of plain dicts that prints as a table."""

from __future__ import annotations

from typing import Any

COLUMNS = (
    ("name", "layer"), ("shape", "shape"), ("structure", "structure"), ("pattern", "pattern"), ("rank", "rank"),
    ("params_before", "params"), ("params_after", "-> params"), ("macs_before", "MACs"), ("macs_after", "-> MACs"),
    ("deployed_params", "deployed params"), ("deployed_macs", "deployed MACs"), ("error", "rel. error"),
    ("status", "status"),
)
#: shown only when some row has them (compress with calibration)
CALIBRATION_COLUMNS = (
    ("sensitivity", "sensitivity"), ("output_error_weight_fit", "out. error (weight fit)"),
    ("output_error", "-> out. error (fitted)"),
)


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key in ("error", "sensitivity", "output_error_weight_fit", "output_error"):
        return f"{value:.4f}"
    if key in ("params_before", "params_after", "macs_before", "macs_after", "deployed_params", "deployed_macs"):
        return f"{value:,}"
    if key == "rank":
        return ",".join(f"{k}={v}" for k, v in value.items())
    if key == "structure":
        return " x ".join("(" + ",".join(str(a) for a in s) + ")" for s in value)
    if key == "shape":
        return "x".join(str(d) for d in value)
    return str(value)


class CompressionReport(list):  # type: ignore[type-arg]
    """One dict per conv/linear layer (compressed or skipped, with why), plus :attr:`totals`.

    Each row has ``name, type, shape, status, structure, pattern, rank, baseline,
    params_before, params_after, macs_before, macs_after, deployed_params, deployed_macs,
    error`` (None where not applicable; ``-> params``/``-> MACs`` are the factors and
    their factorized plan, ``deployed`` what :func:`sekron.torch.to_standard` deploys).
    ``str(report)`` is a fixed-width table; ``list(report)`` and
    :attr:`totals` are plain data (JSON-ready).
    """

    def __init__(self, rows: list[dict[str, Any]], totals: dict[str, Any]) -> None:
        super().__init__(rows)
        self.totals = totals

    def __str__(self) -> str:
        extra = [c for c in CALIBRATION_COLUMNS if any(row.get(c[0]) is not None for row in self)]
        columns = COLUMNS + tuple(extra)
        cells = [[head for _, head in columns]]
        cells += [[_cell(k, row.get(k)) for k, _ in columns] for row in self]
        t = self.totals
        cells.append(["total (model)", "", "", "", "", f"{t['params_before']:,}", f"{t['params_after']:,}",
                      _cell("macs_before", t.get("macs_before")), _cell("macs_after", t.get("macs_after")),
                      _cell("deployed_params", t.get("deployed_params")),
                      _cell("deployed_macs", t.get("deployed_macs")),
                      f"{t['sq_error']:.4f}", f"{t['ratio']:.2f}x"] + [""] * len(extra))
        widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
        lines.insert(1, "-" * len(lines[0]))
        lines.insert(len(lines) - 1, "-" * len(lines[0]))
        lines.append(f"sum of squared relative errors: {t['sq_error']:.4f} (allocation {t['allocation']!r}); "
                     f"uniform per-layer ratio would give {t['uniform_sq_error']:.4f}")
        if t.get("deployed_macs_ratio") is not None:
            lines.append(f"deployed (sekron.torch.to_standard): {t['deployed_macs_ratio']:.2f}x fewer MACs, "
                         f"{t['params_before'] / t['deployed_params']:.2f}x fewer parameters (budget "
                         f"{t.get('budget', 'params')!r})")
        if t.get("calibration_seconds") is not None:
            lines.append(f"calibration: {t['calibration_inputs']} inputs, objective {t.get('objective')!r}, "
                         f"{t['calibration_seconds']:.1f} s")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"CompressionReport({len(self)} layers, ratio={self.totals['ratio']:.2f}x)"
