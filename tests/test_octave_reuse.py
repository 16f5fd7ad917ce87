"""Compressing again an octave away: the cp fits follow octave chains, so the fits of a ratio an octave
from the first are the same fits (cache hits), and a warm search still returns exactly a cold one."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from search_helpers import assert_same_families, decaying_kernel

from sekron import decompose
from sekron.structure import Structure
from sekron.structure_search import _scoring as sc
from sekron.structure_search._cache import SearchCache, weight_hash
from sekron.structure_search._grouped import cp_ranks
from sekron.structure_search._layer import anchor, ladder, layer_families, layer_task

RNG = np.random.default_rng(5)
W = decaying_kernel(RNG, (8, 6, 3, 3))


def _cp_keys(entries: dict) -> dict[tuple[str, int], str]:
    """(tensor hash, rank) -> full key of every cp fit of an S >= 3 structure in ``entries``."""
    out = {}
    for key in entries:
        kind, thash, args = key.split(":", 2)
        if kind == "cp" and "warm" in args:
            out[(thash, int(json.loads(args)["R"]))] = key
    return out


@pytest.mark.parametrize("second", [8, 2])
def test_an_octave_away_equals_cold_and_reuses_the_shared_cp_fits(second: int) -> None:
    whash = weight_hash(W)
    _, first, *_ = layer_task(W, W.size / 4, "sekron", whash)
    warm, new, hits, misses = layer_task(W, W.size / second, "sekron", whash, first)
    cold, cold_new, cold_hits, cold_misses = layer_task(W, W.size / second, "sekron", whash)
    assert json.dumps(warm, default=repr) == json.dumps(cold, default=repr)
    for a, b in zip(warm, cold):  # arrays bitwise, factors included
        np.testing.assert_array_equal(a["err"], b["err"])
        for x, y in zip(a["extra"] or [], b["extra"] or []):
            for u, v in zip(x.get("init", []), y.get("init", [])):
                np.testing.assert_array_equal(u, v)
    assert set(new) | set(first) >= set(cold_new) and hits > cold_hits and misses < cold_misses
    # the same CP problem at the same rank is one fit, whichever octave asked for it
    done, wanted = _cp_keys(first), _cp_keys(cold_new)
    shared = [k for k in wanted if k in done]
    assert shared and all(wanted[k] == done[k] for k in shared)
    assert not [k for k in shared if wanted[k] in new]  # none of them refitted


def test_search_cache_across_octaves_equals_cold() -> None:
    cache = SearchCache()
    with cache.using(W):
        layer_families(W, W.size / 4, "sekron")
    before = cache.misses
    with cache.using(W):
        warm = layer_families(W, W.size / 8, "sekron")
    with cache.using(W):
        warm2 = layer_families(W, W.size / 2, "sekron")
    assert_same_families(warm, layer_families(W, W.size / 8, "sekron"))
    assert_same_families(warm2, layer_families(W, W.size / 2, "sekron"))
    assert cache.misses - before < before


@settings(max_examples=40, deadline=None)
@given(sizes=st.tuples(st.integers(1, 40), st.integers(1, 40), st.integers(1, 12)), size=st.integers(8, 50000),
       j=st.integers(0, 6))
def test_octave_chain_of_a_rank_does_not_depend_on_the_ladder(sizes: tuple[int, int, int], size: int,
                                                              j: int) -> None:
    """The chain that leads to a rank (its fit's cache key) is the same in every ladder that asks for it."""
    s3 = Structure([(sizes[0], 1, 1), (1, sizes[1], 1), (1, 1, sizes[2])], "cp")

    def chains(budget: float) -> dict[int, tuple[int, ...]]:
        budgets = ladder(size, budget)
        ranks = cp_ranks(s3, budgets, anchor(size, budget), size)
        order, root = sc.octave_ranks(size, s3, ranks)
        assert order == sorted(set(order)) and set(ranks) <= set(order)
        out, chain = {}, ()
        for R in order:
            chain = () if R <= root else chain
            out[R] = chain
            chain = (*chain, R)
        return {R: out[R] for R in ranks}

    a, b = chains(size * 2.0 ** -j), chains(size * 2.0 ** -(j + 1))
    assert all(a[R] == b[R] for R in set(a) & set(b))


def test_cp_is_not_scored_at_the_dense_size_in_compress() -> None:
    s3 = Structure([(8, 1, 1, 1), (1, 6, 1, 1), (1, 1, 3, 3)], "cp")
    budgets = ladder(W.size, W.size / 2)
    assert max(budgets) == W.size
    assert cp_ranks(s3, budgets, anchor(W.size, W.size / 2))[-1] == W.size // 23
    assert W.size // 23 not in cp_ranks(s3, budgets, anchor(W.size, W.size / 2), W.size)
    # search() (no ladder) is unchanged: a budget of the dense size still gets its cp rank
    assert cp_ranks(s3, [float(W.size)], float(W.size)) == [W.size // 23]


def test_cp_family_octave_fit_depends_on_its_rank_only() -> None:
    s3 = Structure([(8, 1, 1, 1), (1, 6, 1, 1), (1, 1, 3, 3)], "cp")
    top, below = W.size // 2 // 23, W.size // 4 // 23  # octaves 1 and 2
    alone = sc.cp_family(W, s3, [top], octaves=True)
    both = sc.cp_family(W, s3, [below, top], octaves=True)
    assert alone.ranks.tolist() == [[top]] and both.ranks.tolist() == [[below], [top]]  # lead fits not returned
    assert alone.err[0] == both.err[1]
    for x, y in zip(alone.options(0)["init"][1], both.options(1)["init"][1]):
        np.testing.assert_array_equal(x, y)
    sk = decompose(W, alone.structure, **alone.options(0))  # exact: the recorded error is the factors' error
    assert np.isclose(np.linalg.norm(sk.to_tensor() - W) / np.linalg.norm(W), alone.err[0], rtol=1e-10)
