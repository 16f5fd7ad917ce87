"""The TT of W in its own modes, built from the factors of any SeKron structure.

Every factor is itself a small tensor over the N modes (its digit shape), plus its bonds.
Give each factor a TT over the modes, in which every bond the factor carries is
attached ("tapped") to one mode. The TT of W is then, mode by mode, the contraction of
the factors' cores at that mode: their digits multiply into the mode's index (factor 1
most significant, the Kronecker convention), their TT ranks multiply, and a bond whose
factors tap it at different modes is carried along the cuts in between as a *wire*
(a copy index). Two layouts are used:

* axis-aligned structures (every factor owns at most one mode): each factor taps all its
  bonds at its own mode, so its TT is one core; a factor with no digits (the Tucker core)
  gets a TT over its bonds, each tapped where the bond's other factor lives. The cores
  of W are small and are built explicitly: this is exactly the TT of a TT, the TR-to-TT
  closure, the diagonal cores of a CP and the TT of a Tucker core.
* general structures: every bond is tapped at mode 0, every factor's TT is computed
  right-orthogonal, and the cores of W at modes 1.. are Kronecker products of the
  factors' cores, never formed: the sweep of :mod:`sekron.linalg.tt` multiplies the carried
  matrix into them one factor at a time. W itself is never formed in either layout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorly as tl

from ..linalg.contraction import LabelAllocator, contract
from ..linalg.truncation import Budget
from ..linalg.tt import Applier, constant, exact_rtol, sweep, tt_round, tt_svd
from ..sekron_tensor import SeKronTensor
from ..structure import Structure


def _home(fshape: Sequence[int]) -> int | None:
    big = [m for m, a in enumerate(fshape) if a > 1]
    return max(big, key=lambda m: fshape[m]) if big else None


def _taps(st: Structure, general: bool) -> list[dict[str, int]]:
    """For every factor, the mode at which each of its bonds is attached."""
    if general:
        return [dict.fromkeys(lab, 0) for lab in st.labels]
    homes = [_home(s) for s in st.factor_shapes]
    taps = []
    for k, lab in enumerate(st.labels):
        row: dict[str, int] = {}
        home = homes[k]
        for c in lab:
            if home is not None:
                row[c] = home
            else:
                others = [h for j, (lj, h) in enumerate(zip(st.labels, homes)) if j != k and c in lj and h is not None]
                row[c] = min(others) if others else 0
        taps.append(row)
    return taps


def _factor_tt(F: Any, labels: str, fshape: Sequence[int], taps: dict[str, int], orth: bool) -> list[Any]:
    """TT of one factor over the modes; core m has axes (t, a_m, *bonds tapped at m, t')."""
    nb, N = len(labels), len(fshape)
    sizes = [int(s) for s in F.shape[:nb]]
    tapped = [[i for i, c in enumerate(labels) if taps[c] == m] for m in range(N)]
    order = [ax for m in range(N) for ax in [nb + m, *tapped[m]]]
    groups = [fshape[m] * math.prod(sizes[i] for i in tapped[m]) for m in range(N)]
    X = tl.transpose(F, tuple(order))
    big = [m for m in range(N) if groups[m] > 1]
    if not orth and len(big) <= 1:
        h = big[0] if big else 0
        one = tl.ones((1, 1, 1), **{k: v for k, v in tl.context(F).items() if k != "requires_grad"})
        cores = [tl.reshape(X, (1, groups[m], 1)) if m == h else one for m in range(N)]
    else:
        cores = tt_svd(X, groups)
    return [tl.reshape(c, (int(c.shape[0]), fshape[m], *(sizes[i] for i in tapped[m]), int(c.shape[-1])))
            for m, c in enumerate(cores)]


class TTPlan:
    """The factors' TTs and the wires of one SeKronTensor."""

    def __init__(self, sk: SeKronTensor) -> None:
        st = sk.structure
        self.st, self.general = st, not st.is_axis_aligned
        self.taps = _taps(st, self.general)
        self.fcores = [_factor_tt(F, lab, fs, tp, self.general)
                       for F, lab, fs, tp in zip(sk.factors, st.labels, st.factor_shapes, self.taps)]
        size = sk.rank
        self.size = size
        self.span = {c: (min(t[c] for t in self.taps if c in t), max(t[c] for t in self.taps if c in t))
                     for c in st.bond_labels}
        self.lab = LabelAllocator(st.labels)

    def wires(self, cut: int) -> list[str]:
        """Bonds carried across the cut between mode ``cut`` and ``cut + 1``."""
        return [c for c, (lo, hi) in self.span.items() if lo <= cut < hi]

    def _core_ops(self, m: int) -> tuple[list[tuple[str, Any]], str, str, str]:
        lab, N = self.lab, self.st.order
        left, right = self.wires(m - 1) if m > 0 else [], self.wires(m) if m < N - 1 else []
        rep = {}
        ops: list[tuple[str, Any]] = []
        for c in self.st.bond_labels:
            if c in left:
                rep[c] = lab("w", c, m - 1)
                if c in right:
                    eye = constant(np.eye(self.size[c]), self.fcores[0][0])
                    ops.append((rep[c] + lab("w", c, m), eye))
            elif c in right:
                rep[c] = lab("w", c, m)
            else:
                rep[c] = lab("b", c, m)
        for k, (cores, labels) in enumerate(zip(self.fcores, self.st.labels)):
            at_m = "".join(rep[c] for c in labels if self.taps[k][c] == m)
            ops.insert(k, (lab("t", k, m - 1) + lab("d", k, m) + at_m + lab("t", k, m), cores[m]))
        S = self.st.n_factors
        spec_l = "".join(lab("t", k, m - 1) for k in range(S)) + "".join(lab("w", c, m - 1) for c in left)
        spec_r = "".join(lab("t", k, m) for k in range(S)) + "".join(lab("w", c, m) for c in right)
        return ops, spec_l, "".join(lab("d", k, m) for k in range(S)), spec_r

    def core(self, m: int) -> Any:
        """Core m of the TT of W, formed explicitly: (left rank, d_m, right rank)."""
        ops, spec_l, digits, spec_r = self._core_ops(m)
        out = contract(ops, spec_l + digits + spec_r)
        shape = tuple(int(s) for s in out.shape)
        nl, nd = len(spec_l), len(digits)
        return tl.reshape(out, (math.prod(shape[:nl]), math.prod(shape[nl:nl + nd]), math.prod(shape[nl + nd:])))

    def applier(self, m: int) -> Applier:
        """Core m as an implicit operator (general layout): the Kronecker core is never formed."""
        return _KronCore(self, m)


class _KronCore:
    """``Y = carry @ core_m`` of the general layout, applied one factor core at a time.

    Besides forming Y (``__call__``), it gives ``Y @ X`` and ``Y^H @ Q`` for the implicit
    randomized SVD of :func:`sekron.linalg.tt.sweep`, which never forms Y either.
    """

    def __init__(self, plan: TTPlan, m: int) -> None:
        self.ops, self.spec_l, self.digits, self.spec_r = plan._core_ops(m)
        self.left_shape = tuple(int(c[m].shape[0]) for c in plan.fcores)
        self.right_shape = tuple(int(c[m].shape[-1]) for c in plan.fcores)
        self.d = plan.st.shape[m]
        self.r_lab, self.l_lab = plan.lab("r", m), plan.lab("l", m)
        self.n_cols = math.prod(self.right_shape)

    def _carry(self, M: Any, conj: bool = False) -> tuple[str, Any]:
        M = tl.conj(M) if conj else M
        return self.r_lab + self.spec_l, tl.reshape(M, (int(M.shape[0]), *self.left_shape))

    def __call__(self, M: Any) -> Any:
        out = contract([self._carry(M), *self.ops], self.r_lab + self.digits + self.spec_r)
        return tl.reshape(out, (int(M.shape[0]), self.d, -1))

    def matvec(self, M: Any, X: Any) -> Any:
        """``Y @ X`` for X of shape (n_cols, l): (r * d_m, l)."""
        first = (self.spec_r + self.l_lab, tl.reshape(X, (*self.right_shape, int(X.shape[1]))))
        out = contract([first, *reversed(self.ops), self._carry(M)], self.r_lab + self.digits + self.l_lab)
        return tl.reshape(out, (-1, int(X.shape[1])))

    def rmatvec(self, M: Any, Q: Any) -> Any:
        """``Y^H @ Q`` for Q of shape (r * d_m, l): (n_cols, l)."""
        ell = int(Q.shape[1])
        digit_sizes = tuple(int(c.shape[1]) for _, c in self.ops)  # general layout: factor cores only
        first = (self.r_lab + self.digits + self.l_lab, tl.reshape(Q, (int(M.shape[0]), *digit_sizes, ell)))
        ops = [(spec, tl.conj(c)) for spec, c in self.ops]
        out = contract([first, self._carry(M, conj=True), *ops], self.spec_r + self.l_lab)
        return tl.reshape(out, (self.n_cols, ell))


def sekron_to_tt_cores(sk: SeKronTensor, caps: Sequence[int | None], tol: float | None) -> tuple[list[Any], float]:
    """TT cores of W and the achieved absolute error (0 for the exact construction)."""
    plan = TTPlan(sk)
    N = sk.structure.order
    exact = tol is None and all(c is None for c in caps)
    if not plan.general:
        cores = [plan.core(m) for m in range(N)]
        if exact:
            return cores, 0.0
        return tt_round(cores, caps, tol)
    first = plan.core(0)
    norm = float(tl.to_numpy(tl.norm(tl.reshape(first, (-1,)))))
    budget = Budget.make(tol, norm, N - 1)
    cutoff = exact_rtol(first.dtype) * norm
    cores = sweep(first, [plan.applier(m) for m in range(1, N)], caps, budget, cutoff, exact)
    return cores, math.sqrt(budget.spent)
