"""Pictures of a structure: its bond graph and its factor-shape grid (matplotlib, optional).

matplotlib is imported inside :func:`draw` and :func:`spectrum` only, through ``matplotlib.figure.Figure``
(no pyplot, so no global backend or state is touched). Install it with
``pip install sekron[plot]``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from .sekron_tensor import SeKronTensor
from .structure import Structure


def _parts(obj: Any) -> tuple[Structure, dict[str, int] | None]:
    if isinstance(obj, SeKronTensor):
        return obj.structure, obj.rank
    if isinstance(obj, Structure):
        return obj, None
    raise TypeError(f"draw needs a sekron.Structure or SeKronTensor, got {type(obj).__name__}")


def _bond_graph(ax: Any, st: Structure, rank: dict[str, int] | None) -> None:
    S = st.n_factors
    users = {c: [k for k, lab in enumerate(st.labels) if c in lab] for c in st.bond_labels}
    for i, (c, ks) in enumerate(users.items()):
        name = c if rank is None else f"{c}={rank[c]}"
        if len(ks) == 2:
            a, b = ks
            height = 0.0 if b - a == 1 else 0.35 * (b - a)
            xs = [a + (b - a) * t / 20 for t in range(21)]
            ys = [height * math.sin(math.pi * t / 20) for t in range(21)]
            ax.plot(xs, ys, color="tab:blue", lw=1.5, zorder=1)
            ax.text((a + b) / 2, height + 0.08, name, ha="center", va="bottom", fontsize=9, color="tab:blue")
        else:
            hx, hy = sum(ks) / len(ks) + 0.15 * i, -0.7 - 0.45 * i
            for k in ks:
                ax.plot([k, hx], [0, hy], color="tab:orange", lw=1.2, zorder=1)
            ax.scatter([hx], [hy], marker="s", s=60, color="tab:orange", zorder=2)
            ax.text(hx + 0.08, hy - 0.05, name, ha="left", va="top", fontsize=9, color="tab:orange")
    for k, shape in enumerate(st.factor_shapes):
        ax.scatter([k], [0], s=900, color="white", edgecolors="black", zorder=3)
        ax.text(k, 0, f"A{k + 1}", ha="center", va="center", fontsize=10, zorder=4)
        ax.text(k, -0.28, "x".join(map(str, shape)), ha="center", va="top", fontsize=8, zorder=4)
    ax.set_xlim(-0.7, S - 0.3)
    ax.set_ylim(-1.0 - 0.45 * len(users), 0.6 + 0.35 * S)
    ax.set_axis_off()
    ax.set_title(f"bond graph: pattern {st.pattern!r}, labels {', '.join(st.labels)}", fontsize=10)


def _grid(ax: Any, st: Structure) -> None:
    values = [[math.log2(a) for a in shape] for shape in st.factor_shapes]
    ax.imshow(values, cmap="Blues", vmin=0, vmax=max(1.0, max(max(r) for r in values)) * 1.4, aspect="auto")
    for k, shape in enumerate(st.factor_shapes):
        for n, a in enumerate(shape):
            ax.text(n, k, str(a), ha="center", va="center", fontsize=10)
    ax.set_xticks(range(st.order), [f"mode {n + 1}\n{d}" for n, d in enumerate(st.shape)], fontsize=8)
    ax.set_yticks(range(st.n_factors), [f"A{k + 1}" for k in range(st.n_factors)], fontsize=8)
    ax.set_title(f"factor-shape grid, shape {st.shape}", fontsize=10)


def draw(structure_or_sk: Structure | SeKronTensor, path: str | Path | None = None, *, dpi: int = 110) -> Any:
    """Draw the bond graph and the factor-shape grid of a structure (or of a SeKronTensor).

    Left: one node per factor with its digit shape; a bond shared by two factors is an
    arc, a bond shared by more (a hyperedge, as in ``nested`` and ``cp``) is a square hub
    joined to each factor; bond sizes are shown for a SeKronTensor. Right: the S x N grid
    of factor sizes ``a_n^(k)`` (rows: factors, columns: modes).

    Parameters
    ----------
    structure_or_sk : Structure or SeKronTensor
    path : str or Path, optional
        Where to save the PNG. Without it the figure is returned unsaved.
    dpi : int
        Resolution of the saved PNG.

    Returns
    -------
    pathlib.Path or matplotlib.figure.Figure
        The saved file's path, or the figure when ``path`` is None.

    Examples
    --------
    >>> import sekron, tempfile, os
    >>> st = sekron.Structure([(4, 1, 3), (2, 4, 1), (1, 2, 1)], "chain")
    >>> out = draw(st, os.path.join(tempfile.mkdtemp(), "chain.png"))
    >>> out.suffix, out.stat().st_size > 0
    ('.png', True)
    """
    st, rank = _parts(structure_or_sk)
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("draw needs matplotlib: pip install 'sekron[plot]'") from exc
    fig = Figure(figsize=(4 + 1.3 * st.n_factors + 0.7 * st.order, 3.6))
    ax_graph, ax_grid = fig.subplots(1, 2, gridspec_kw={"width_ratios": [max(st.n_factors, 2), max(st.order, 2)]})
    _bond_graph(ax_graph, st, rank)
    _grid(ax_grid, st)
    return _finish(fig, path, dpi)


def spectrum_data(tensor: Any, structure: Structure, ranks: Any = None) -> dict[str, list[Any]]:
    """Relative error and parameters against the rank cap, for :func:`spectrum`.

    ``tensor`` is a dense array (each rank is a :func:`sekron.decompose`) or a
    SeKronTensor with the structure's factor shapes (each rank is :func:`sekron.round` of
    its conversion to the structure's pattern; W is never formed). The ranks run over
    ``ranks`` (default 1..16) and stop early once the error is below ``1e-12``.

    Examples
    --------
    >>> import numpy as np, sekron
    >>> W = np.random.default_rng(0).standard_normal((8, 8))
    >>> d = spectrum_data(W, sekron.Structure([(2, 2), (4, 4)]), ranks=[1, 2, 4])
    >>> d["rank"], d["error"][0] > d["error"][1] > d["error"][2]
    ([1, 2, 4], True)
    """
    import warnings

    from .algebra.arithmetic import norm
    from .conversions import convert
    from .conversions import round as sk_round
    from .decomposition import decompose

    if not isinstance(structure, Structure):
        raise TypeError(f"structure must be a sekron.Structure, got {type(structure).__name__}")
    ranks = list(range(1, 17)) if ranks is None else [int(r) for r in ranks]
    out: dict[str, list[Any]] = {"rank": [], "error": [], "params": []}
    if isinstance(tensor, SeKronTensor):
        if tensor.structure.factor_shapes != structure.factor_shapes:
            raise ValueError(f"spectrum of a SeKronTensor needs the structure's factor shapes "
                             f"{structure.factor_shapes}; the tensor has {tensor.structure.factor_shapes}")
        base = convert(tensor, structure)
        ref = float(np.abs(norm(tensor)))
    for r in ranks:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if isinstance(tensor, SeKronTensor):
                approx = sk_round(base, rank=r)
                err = float(np.abs(norm(approx - base))) / max(ref, 1e-300)
            else:
                approx, err = decompose(tensor, structure, rank=r, return_error=True)
        out["rank"].append(r)
        out["error"].append(float(err))
        out["params"].append(approx.n_params)
        if err < 1e-12:
            break
    return out


def spectrum(tensor: Any, structure: Structure, path: str | Path | None = None, *, ranks: Any = None,
             dpi: int = 110) -> Any:
    """Plot the relative error of ``structure`` against its rank cap (and the parameters it costs).

    See :func:`spectrum_data` for what is computed. Returns the saved path, or the
    matplotlib Figure when ``path`` is None.

    Examples
    --------
    >>> import numpy as np, sekron, tempfile, os
    >>> W = np.random.default_rng(0).standard_normal((8, 8))
    >>> out = spectrum(W, sekron.Structure([(2, 2), (4, 4)]), os.path.join(tempfile.mkdtemp(), "s.png"))
    >>> out.suffix
    '.png'
    """
    data = spectrum_data(tensor, structure, ranks)
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("spectrum needs matplotlib: pip install 'sekron[plot]'") from exc
    fig = Figure(figsize=(5.5, 3.6))
    ax = fig.subplots()
    err = np.maximum(np.array(data["error"]), 1e-17)
    ax.semilogy(data["rank"], err, "o-", color="tab:blue")
    for r, e, p in zip(data["rank"], err, data["params"]):
        ax.annotate(str(p), (r, e), textcoords="offset points", xytext=(0, 6), fontsize=7, ha="center")
    ax.set_xlabel("rank cap (every bond)")
    ax.set_ylabel("relative error ||W - W_r|| / ||W||")
    ax.set_title(f"pattern {structure.pattern!r}, grid {structure.factor_shapes} (labels: parameters)", fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    return _finish(fig, path, dpi)


def _finish(fig: Any, path: str | Path | None, dpi: int) -> Any:
    """Lay out ``fig``; return it, or save it as PNG at ``path`` and return the path."""
    fig.tight_layout()
    if path is None:
        return fig
    out = Path(path)
    fig.savefig(out, dpi=dpi, format="png")
    return out
