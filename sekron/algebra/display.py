"""Notebook display of a SeKronTensor: an HTML table of the factor grid and the bond sizes."""

from __future__ import annotations

import html as _html
import math

from ..sekron_tensor import SeKronTensor
from ._common import device_of

__all__ = ["html"]


def html(sk: SeKronTensor) -> str:
    """The ``_repr_html_`` of a SeKronTensor: a header line, then one row per factor.

    Columns: the factor, its digit shape on every mode (the factor-shape grid), its bonds
    with their sizes, and its stored shape.

    Examples
    --------
    >>> import sekron
    >>> out = html(sekron.random_sekron(sekron.Structure([(2, 3), (3, 2)], "chain"), 2))
    >>> out.startswith("<div") and "a=2" in out
    True
    """
    st = sk.structure
    rank = sk.rank
    esc = _html.escape
    dense = math.prod(sk.shape)
    head = (f"<b>SeKronTensor</b> shape {sk.shape}, pattern {esc(repr(st.pattern))}, "
            f"rank {esc(str(rank))}, {sk.n_params} params ({dense / max(sk.n_params, 1):.2f}x), "
            f"dtype {esc(str(sk.dtype).replace('torch.', ''))}, backend {esc(sk._backend)}, "
            f"device {esc(device_of(sk.factors[0]))}")
    modes = "".join(f"<th>mode {n + 1} ({d})</th>" for n, d in enumerate(sk.shape))
    rows = []
    for k, (f, fshape, lab) in enumerate(zip(sk.factors, st.factor_shapes, st.labels)):
        cells = "".join(f"<td style='text-align:center'>{a}</td>" for a in fshape)
        bonds = ", ".join(f"{esc(c)}={rank[c]}" for c in lab) or "&mdash;"
        stored = tuple(int(s) for s in f.shape)
        rows.append(f"<tr><td>A{k + 1}</td>{cells}<td>{bonds}</td><td>{stored}</td></tr>")
    table = (f"<table><thead><tr><th>factor</th>{modes}<th>bonds</th><th>stored</th></tr></thead>"
             f"<tbody>{''.join(rows)}</tbody></table>")
    return f"<div>{head}{table}</div>"
