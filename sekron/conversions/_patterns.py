"""Pattern changes on one factor-shape grid (``convert``) and recompression (``round``).

``convert`` routes every bond of the source pattern through bonds of the target
pattern. A source bond c, carried by factors U_c, is sent along a connected set E_c of
target bonds that reaches every factor of U_c (a shortest-path tree in the target's
bond graph; a single target bond when one already joins all of U_c). A target bond's
size is the product of the sizes of the source bonds routed through it. Each target
factor is its source factor times copy (delta) tensors that tie together the copies of
c it carries; a factor that carries one copy of c without using c is constant along it.
Summing the target bonds then sums every source bond exactly once: the conversion is
exact. It is possible whenever the target's bond graph joins the factors of every
source bond, which holds for every pair of named patterns; the ranks it needs are
the containments of docs/math.md §3 (chain -> nested keeps the ranks, nested -> chain and
tucker -> chain take running products, anything -> cp takes the product of all ranks).
"""

from __future__ import annotations

import math
import warnings
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorly as tl

from .._backend import dispatch
from .._validation import check_size, check_tol
from ..linalg.contraction import LabelAllocator, contract, einsum2
from ..linalg.svd import svd_full
from ..linalg.truncation import Budget, branch_mask, choose_ranks
from ..linalg.tt import constant, tt_norm_sq, tt_round
from ..sekron_tensor import SeKronTensor, _scaled, _unscale
from ..structure import PATTERNS, Structure


def _users(labels: Sequence[str]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for k, lab in enumerate(labels):
        for c in lab:
            out.setdefault(c, []).append(k)
    return out


def _route(users: list[int], q_users: dict[str, list[int]], q_order: list[str], why: str) -> list[str]:
    """Target bonds that connect every factor in ``users`` (fewest-user bonds first)."""
    bonds = sorted(q_order, key=lambda b: (len(q_users[b]), q_order.index(b)))
    for b in bonds:
        if set(users) <= set(q_users[b]):
            return [b]
    parent: dict[int, tuple[int, str]] = {}
    seen, queue = {users[0]}, deque([users[0]])
    while queue:
        node = queue.popleft()
        for b in bonds:
            if node in q_users[b]:
                for nxt in q_users[b]:
                    if nxt not in seen:
                        seen.add(nxt)
                        parent[nxt] = (node, b)
                        queue.append(nxt)
    route: list[str] = []
    for u in users[1:]:
        if u not in seen:
            raise ValueError(f"cannot convert exactly: {why} joins factors {users}, but the target bond graph does "
                             f"not connect factor {users[0]} to factor {u}")
        while u != users[0]:
            u, b = parent[u]
            if b not in route:
                route.append(b)
    return sorted(route, key=q_order.index)


def _target(st: Structure, pattern: Any) -> Structure:
    if isinstance(pattern, Structure):
        if pattern.factor_shapes != st.factor_shapes:
            raise ValueError(f"convert keeps the factor shapes {st.factor_shapes}; got a structure with "
                             f"{pattern.factor_shapes}")
        return pattern
    if isinstance(pattern, str):
        if pattern not in PATTERNS:
            raise ValueError(f"pattern must be one of {list(PATTERNS)} or a sequence of labels, got {pattern!r}")
        return st.with_pattern(pattern)
    return Structure(st.factor_shapes, labels=pattern)


@dispatch
def convert(sk: SeKronTensor, pattern: Any) -> SeKronTensor:
    """The same tensor with another bond pattern on the same factor-shape grid, exactly.

    Parameters
    ----------
    sk : SeKronTensor
    pattern : str, sequence of labels, or Structure
        The target: a named pattern, custom labels, or a structure with the same
        factor shapes.

    Returns
    -------
    SeKronTensor
        Equal to ``sk`` (up to rounding). Bond sizes follow the routing in the module
        docstring: chain -> nested keeps the ranks; nested -> chain has bond sizes
        ``R_1 .. R_k``; cp -> nested keeps the rank; tucker -> chain has running products.
        Follow with :func:`sekron.conversions.round` to shrink them.

    Raises
    ------
    ValueError
        When the target's bonds leave some factors that share a source bond
        unconnected (possible only with custom labels).

    Examples
    --------
    >>> import numpy as np, sekron
    >>> sk = sekron.random_sekron(sekron.Structure([(2, 2), (2, 3), (3, 2)], "nested"), [2, 3])
    >>> ch = convert(sk, "chain")
    >>> ch.rank
    {'a': 2, 'b': 6}
    >>> bool(np.allclose(ch.to_tensor(), sk.to_tensor()))
    True
    """
    if not isinstance(sk, SeKronTensor):
        raise TypeError(f"expected a SeKronTensor, got {type(sk).__name__}")
    st = sk.structure
    tgt = _target(st, pattern)
    if tgt.labels == st.labels:
        return SeKronTensor(sk.factors, tgt)
    p_users, q_users = _users(st.labels), _users(tgt.labels)
    q_order = list(tgt.bond_labels)
    routes = {c: _route(p_users[c], q_users, q_order, f"bond {c!r} of {st.labels!r}") for c in st.bond_labels}
    size = sk.rank
    comps = {b: [c for c in st.bond_labels if b in routes[c]] for b in q_order}
    new_size = {b: math.prod(size[c] for c in comps[b]) for b in q_order}
    total = sum(math.prod(new_size[b] for b in lab) * st.factor_sizes[k] for k, lab in enumerate(tgt.labels))
    check_size(total, f"the {tgt.pattern or 'custom'}-pattern factors (bond sizes {new_size})",
               "convert fewer factors at a time, or round first to lower the ranks")
    factors = [_target_factor(sk.factors[k], k, st, tgt, routes, comps, size) for k in range(st.n_factors)]
    return SeKronTensor(factors, tgt)


def _target_factor(F: Any, k: int, st: Structure, tgt: Structure, routes: dict[str, list[str]],
                   comps: dict[str, list[str]], size: dict[str, int]) -> Any:
    lab = LabelAllocator((*st.labels, *tgt.labels))
    name = {(b, c): lab.new() for b in tgt.labels[k] for c in comps[b]}
    digits = lab.many(st.order)
    spec, arr = st.labels[k] + digits, F
    for c in st.bond_labels:
        copies = [name[(b, c)] for b in tgt.labels[k] if b in routes[c]]
        if not copies:
            continue
        eye = constant(np.eye(size[c]), F)
        if c in st.labels[k]:
            spec = spec.replace(c, copies[0])
        elif len(copies) == 1:
            arr, spec = einsum2(spec, arr, copies[0], constant(np.ones(size[c]), F), spec + copies[0]), spec + copies[0]
            continue
        else:
            arr = einsum2(spec, arr, copies[0] + copies[1], eye, spec + copies[0] + copies[1])
            spec, copies = spec + copies[0] + copies[1], copies[1:]
        for extra in copies[1:]:
            arr = einsum2(spec, arr, copies[0] + extra, eye, spec + extra)
            spec += extra
    out = "".join(name[(b, c)] for b in tgt.labels[k] for c in comps[b]) + digits
    arr = contract([(spec, arr)], out)
    bonds = tuple(math.prod(size[c] for c in comps[b]) for b in tgt.labels[k])
    return tl.reshape(arr, bonds + st.factor_shapes[k])


# --- recompression ------------------------------------------------------------------
def _caps(sk: SeKronTensor, rank: Any) -> dict[str, int]:
    caps = sk.structure.parse_rank(rank)
    return {c: sk.rank[c] if caps[c] is None else min(int(caps[c] or 0), sk.rank[c]) for c in caps}


def _round_chain(sk: SeKronTensor, caps: dict[str, int], tol: float | None) -> list[Any]:
    st = sk.structure
    S, P, bonds = st.n_factors, st.factor_sizes, st.bond_labels
    cores = []
    for k, f in enumerate(sk.factors):
        nb = len(st.labels[k])
        m = tl.reshape(f, (*tuple(int(s) for s in f.shape[:nb]), P[k]))
        m = m[None] if k == 0 else m
        m = m[:, None] if k == S - 1 else m
        cores.append(tl.transpose(m, (0, 2, 1)))
    out, _ = tt_round(cores, [caps[c] for c in bonds], tol)
    factors = [tl.transpose(c, (0, 2, 1)) for c in out]
    factors[0], factors[-1] = factors[0][0], factors[-1][:, 0]
    return [tl.reshape(f, tuple(int(s) for s in f.shape[:-1]) + st.factor_shapes[k]) for k, f in enumerate(factors)]


def _round_ring(sk: SeKronTensor, caps: dict[str, int], tol: float | None) -> list[Any]:
    st = sk.structure
    P, bonds = st.factor_sizes, st.bond_labels
    z = bonds[0]
    Rz = sk.rank[z]
    if caps[z] < Rz:
        raise ValueError(f"round keeps the closing bond {z!r} of a ring (size {Rz}); got a cap of {caps[z]}. "
                         "Convert to 'chain' first to truncate it")
    cores = [tl.transpose(tl.reshape(f, (*tuple(int(s) for s in f.shape[:2]), P[k])), (0, 2, 1))
             for k, f in enumerate(sk.factors)]
    r1, rl = int(cores[0].shape[2]), int(cores[-1].shape[0])
    cores[0] = tl.reshape(cores[0], (1, Rz * P[0], r1))
    cores[-1] = tl.reshape(cores[-1], (rl, P[-1] * Rz, 1))
    if tol is not None:

        open_norm = math.sqrt(tt_norm_sq(cores))
        w_norm = float(tl.to_numpy(sk.norm()))
        tol = tol * w_norm / (math.sqrt(Rz) * open_norm) if open_norm > 0 else tol
    out, _ = tt_round(cores, [caps[c] for c in bonds[1:]], tol)
    out[0] = tl.reshape(out[0], (Rz, P[0], int(out[0].shape[2])))
    out[-1] = tl.reshape(out[-1], (int(out[-1].shape[0]), P[-1], Rz))
    return [tl.reshape(tl.transpose(c, (0, 2, 1)), (int(c.shape[0]), int(c.shape[2])) + st.factor_shapes[k])
            for k, c in enumerate(out)]


def _gram(sk: SeKronTensor, k: int) -> Any:
    """Gram matrix over bonds r_1..r_{k+1} of the network of factors k+1.. (nested)."""
    st = sk.structure
    labels = LabelAllocator(st.labels)
    prime = {c: labels.new() for c in st.bond_labels}
    digit = labels.new()
    ops = []
    for f, lab in zip(sk.factors[k + 1:], st.labels[k + 1:]):
        flat = tl.reshape(f, (*tuple(int(s) for s in f.shape[:len(lab)]), -1))
        ops.append((lab + "".join(prime[c] for c in lab),
                    einsum2(lab + digit, flat, "".join(prime[c] for c in lab) + digit, tl.conj(flat),
                            lab + "".join(prime[c] for c in lab))))
    keep = st.bond_labels[: k + 1]
    G = contract(ops, "".join(keep) + "".join(prime[c] for c in keep))
    n = math.prod(sk.rank[c] for c in keep)
    return tl.reshape(G, (n, n))


def _round_nested(sk: SeKronTensor, caps: dict[str, int], tol: float | None, merged: bool = False) -> list[Any]:
    """Re-run the recursive truncation on the factors: level k sees every branch's remainder
    through old-bond coefficients Z and the Gram matrix of the old sub-networks. ``merged``: ``sk`` is the
    input with coinciding summands merged; when the truncation would miss ``tol``, it is returned as is."""
    st = sk.structure
    S, P, bonds = st.n_factors, st.factor_sizes, st.bond_labels
    norm = float(tl.to_numpy(sk.norm()))
    budget = Budget.make(tol, norm, S - 1)
    Z = constant(np.ones((1, 1)), sk.factors[0])
    new_ranks: tuple[int, ...] = ()
    factors = []
    for k in range(S - 1):
        R_old = sk.rank[bonds[k]]
        B, O = (int(s) for s in Z.shape)
        F = tl.reshape(sk.factors[k], (O, R_old, P[k]))
        A = tl.reshape(tl.reshape(Z, (B, O, 1, 1)) * F[None], (B, O * R_old, P[k]))
        lam, V = tl.eigh(_gram(sk, k))
        lam = tl.where(lam > 0, lam, tl.zeros(tuple(lam.shape), **tl.context(lam)))
        half = V * tl.reshape(tl.sqrt(lam), (1, -1))
        M = tl.matmul(tl.transpose(A, (0, 2, 1)), tl.reshape(half, (1, *tuple(int(s) for s in half.shape))))
        U, s, _ = svd_full(M)
        ranks = choose_ranks(s, caps[bonds[k]], budget, bonds[k])
        R = int(ranks.max())
        U = U[:, :, :R] * tl.reshape(branch_mask(ranks, R, U), (B, 1, R))
        factors.append(tl.reshape(tl.transpose(U, (0, 2, 1)), new_ranks + (R,) + st.factor_shapes[k]))
        new_ranks += (R,)
        Z = tl.reshape(tl.matmul(tl.conj(tl.transpose(U, (0, 2, 1))), tl.transpose(A, (0, 2, 1))), (B * R, -1))
    last = tl.matmul(Z, tl.reshape(sk.factors[-1], (int(Z.shape[1]), P[-1])))
    factors.append(tl.reshape(last, new_ranks + st.factor_shapes[-1]))
    if tol is not None and budget.spent > (tol * norm) ** 2 * (1 + 1e-9):
        if merged:
            return list(sk.factors)  # the merged summands are exact and no larger than the input: keep them
        warnings.warn(f"round kept the ranks at most {sk.rank} (they never grow), which left a relative error of "
                      f"{math.sqrt(budget.spent) / norm:.3g} above tol={tol}", UserWarning, stacklevel=4)
    return factors


def _round_tucker(sk: SeKronTensor, caps: dict[str, int], tol: float | None) -> list[Any]:
    from ..algebra.rounding import round_tucker

    return round_tucker(sk, caps, tol)


def _round_cp(sk: SeKronTensor, caps: dict[str, int], tol: float | None) -> list[Any]:
    from ..algebra.rounding import round_cp

    return round_cp(sk, caps, tol)


_ROUNDERS = {"chain": _round_chain, "ring": _round_ring, "nested": _round_nested, "tucker": _round_tucker,
             "cp": _round_cp}


@dispatch
def round_(sk: SeKronTensor, rank: Any = None, tol: float | None = None) -> SeKronTensor:
    """Recompress a SeKronTensor in its own structure, from the factors (W is never formed).

    * ``chain``: TT-rounding over the factors (right-orthogonalise, then one truncating
      SVD sweep): ``||W - W_hat|| <= tol ||W||``, as for ``decompose``'s TT-SVD.
    * ``ring``: the same on the ring opened at its closing bond, which is kept; the
      budget is divided by ``sqrt(R_z)`` (closing the ring adds at most that factor), so
      ``||W - W_hat|| <= tol ||W||`` still holds.
    * ``tucker``: the factors are orthogonalised into the core, whose HOSVD over the bond
      modes is truncated: ``||W - W_hat|| <= tol ||W||`` (HOSVD bound).
    * ``cp``: terms parallel in all factors but one are merged exactly; then, with ``tol``,
      the smallest rank whose CP-ALS fit (from the factors) has a measured error within
      ``tol ||W||``; with ``rank`` alone, the ALS fit at that rank (no guarantee). See
      :mod:`sekron.algebra.rounding`.
    * ``nested``: the paper's recursive truncation re-run on the factors: each branch's
      remainder is seen through the Gram matrix of the old sub-network, so the error is
      the sum of the discarded squared singular values, as for ``decompose``. The
      singular values come from a Gram eigendecomposition, accurate to about
      ``sqrt(eps) ||W||``.

    For ``ring`` and ``nested``, direct summands that coincide up to a scalar (``a + a``,
    ``a - 0.5 a``, the ``a`` in ``a + b + a``, all built by ``+`` as block-diagonal factors)
    are merged first, exactly (:func:`sekron.algebra.rounding.merge_summands`): a ring's
    local SVDs cannot see that two blocks add up to one, so without this ``round(a + a)``
    would keep the doubled ranks. Summands equal only up to a change of basis on the
    bonds are not detected.

    Ranks never grow: every cap is at most the current bond size. For nested that cap can
    bind (re-orthogonalising a level mixes the branches' remainders, whose ranks then add
    up); a warning then reports the error (unless summands were merged: the merged tensor,
    exact and no larger, is returned instead), and with neither ``rank`` nor ``tol`` a nested
    tensor is returned unchanged (its coinciding summands merged). Whenever rounding would not reduce the number of
    parameters, the input itself (exact) is returned. On the output of ``decompose`` the levels are already
    orthogonal, nothing mixes and the guarantee holds.

    Examples
    --------
    >>> import numpy as np, sekron
    >>> W = np.random.default_rng(0).standard_normal((8, 8))
    >>> sk = sekron.decompose(W, sekron.Structure([(2, 2), (2, 2), (2, 2)], "chain"))
    >>> small = round_(sk, tol=0.5)
    >>> all(small.rank[c] <= sk.rank[c] for c in sk.rank)
    True
    >>> bool(np.linalg.norm(small.to_tensor() - W) <= 0.5 * np.linalg.norm(W))
    True
    """
    if not isinstance(sk, SeKronTensor):
        raise TypeError(f"expected a SeKronTensor, got {type(sk).__name__}")
    tol = check_tol(tol)
    st = sk.structure
    if st.pattern not in _ROUNDERS or st.n_factors < 2:
        raise ValueError(f"round supports the patterns {sorted(_ROUNDERS)} with S >= 2, got {st.pattern!r} with "
                         f"S = {st.n_factors}; convert to one of them first (sekron.conversions.convert)")
    src = sk
    if st.pattern == "ring" or (st.pattern == "nested" and st.n_factors > 2):
        from ..algebra.rounding import merge_summands

        sk = merge_summands(sk)  # a + a -> 2 a, exactly: local SVDs cannot see that two summands coincide
    caps = _caps(sk, rank)
    if st.pattern == "nested" and st.n_factors > 2 and rank is None and tol is None:
        return sk if sk.n_params < src.n_params else src  # a re-orthogonalised nested form could need larger ranks
    scaled, log_scale = _scaled(sk)  # tiny or huge factors: round at unit scale (no Gram entry underflows)
    if st.n_factors == 2 and st.pattern in ("nested", "chain", "tucker", "cp"):  # one bond: the SVD is optimal
        out = SeKronTensor(_unscale(_round_chain(scaled, caps, tol), log_scale), st)
    elif st.pattern == "nested":
        out = SeKronTensor(_unscale(_round_nested(scaled, caps, tol, sk is not src), log_scale), st)
    else:
        out = SeKronTensor(_unscale(_ROUNDERS[str(st.pattern)](scaled, caps, tol), log_scale), st)
    if out.n_params >= sk.n_params:
        sk = sk if sk.n_params < src.n_params else src
        return sk  # no saving (ranks never grow, so they are all unchanged): the input itself is exact
    return out
