"""search: candidates within budget, sorted, baselines present, predicted error == measured error."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from sekron.search import BASELINES, Candidate, search

RNG = np.random.default_rng(0)


def _kernel(shape: tuple[int, ...], decay: float = 0.6) -> np.ndarray:
    """A random kernel with a decaying spectrum (more realistic than white noise)."""
    W = RNG.standard_normal(shape)
    M = W.reshape(shape[0], -1)
    U, s, Vh = np.linalg.svd(M, full_matrices=False)
    return ((U * (s * decay ** np.arange(s.size))) @ Vh).reshape(shape)


def _measured(W: np.ndarray, cand: Candidate) -> tuple[float, int]:
    sk = cand.decompose(W)
    return float(np.linalg.norm(W - sk.to_tensor()) / np.linalg.norm(W)), sk.n_params


@pytest.fixture(scope="module")
def conv_result() -> tuple[np.ndarray, list[Candidate]]:
    W = _kernel((16, 8, 3, 3), decay=0.8)
    return W, search(W, ratio=4)


def test_within_budget_and_sorted(conv_result: tuple[np.ndarray, list[Candidate]]) -> None:
    W, cands = conv_result
    assert len(cands) > 10
    assert all(c.params <= W.size / 4 for c in cands)
    errors = [c.error for c in cands]
    assert errors == sorted(errors)
    assert all(0 <= c.error <= 1 + 1e-12 for c in cands)


def test_baselines_present_and_never_better(conv_result: tuple[np.ndarray, list[Candidate]]) -> None:
    _, cands = conv_result
    found = {c.baseline: c for c in cands if c.baseline}
    assert set(found) == set(BASELINES)
    assert found["tt"].structure.is_axis_aligned and found["tt"].pattern == "chain"
    assert found["tr"].pattern == "ring" and found["cp"].pattern == "cp" and found["tucker"].pattern == "tucker"
    assert cands[0].error <= min(c.error for c in found.values())


def test_every_kind_of_candidate_present(conv_result: tuple[np.ndarray, list[Candidate]]) -> None:
    _, cands = conv_result
    kinds = {(c.structure.n_factors, c.pattern) for c in cands if c.baseline is None}
    assert {(2, "nested"), (3, "nested"), (3, "chain"), (3, "tucker"), (3, "cp")} <= kinds


def test_predicted_error_equals_measured(conv_result: tuple[np.ndarray, list[Candidate]]) -> None:
    W, cands = conv_result
    picked = {(c.structure.n_factors, c.pattern, c.baseline): c for c in reversed(cands)}
    for cand in [cands[0], *picked.values()]:
        err, n_params = _measured(W, cand)
        assert n_params == cand.params, cand
        assert err == pytest.approx(cand.error, rel=1e-7, abs=1e-9), (cand.structure, cand.rank)


def test_linear_weight_and_torch_input() -> None:
    torch = pytest.importorskip("torch")
    W = _kernel((24, 18))
    cands = search(torch.as_tensor(W, dtype=torch.float32), max_params=120)
    assert all(c.params <= 120 for c in cands)
    err, _ = _measured(W.astype(np.float32).astype(np.float64), cands[0])
    assert err == pytest.approx(cands[0].error, rel=1e-6)


def test_macs_budget_and_objectives() -> None:
    W = _kernel((16, 16, 3, 3))
    shape = (1, 16, 12, 12)
    free = search(W, ratio=3, input_shape=shape, padding=1)
    assert all(c.macs is not None for c in free)
    cap = int(np.median([c.macs for c in free]))
    capped = search(W, ratio=3, max_macs=cap, input_shape=shape, padding=1)
    assert capped and all(c.macs <= cap for c in capped)
    by_macs = search(W, ratio=3, input_shape=shape, padding=1, objective="macs")
    assert [c.macs for c in by_macs] == sorted(c.macs for c in by_macs)
    by_params = search(W, ratio=3, objective="params", n_factors=(2,), patterns=("nested",))
    assert [c.params for c in by_params] == sorted(c.params for c in by_params)
    assert {c.structure.n_factors for c in by_params if c.baseline is None} == {2}


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({}, ValueError, "give a budget"),
        ({"ratio": 1}, ValueError, "ratio must be a number > 1"),
        ({"ratio": 0.5}, ValueError, "ratio must be a number > 1"),
        ({"max_params": 3}, ValueError, "no structure .* meets the budget"),
        ({"ratio": 2, "n_factors": (4,)}, ValueError, "n_factors"),
        ({"ratio": 2, "objective": "speed"}, ValueError, "objective"),
        ({"ratio": 2, "patterns": ("ring2",)}, ValueError, "patterns"),
        ({"max_macs": 10}, ValueError, "input_shape"),
    ],
)
def test_bad_inputs(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        search(_kernel((8, 4, 3, 3)), **kwargs)


def test_bad_weight() -> None:
    with pytest.raises(TypeError, match="weight must be an array"):
        search([[1.0, 2.0]], ratio=2)
    W = _kernel((8, 4, 3, 3))
    W[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        search(W, ratio=2)


# --- speed-oriented internals: they must not weaken the guarantees ------------------------------
def test_baseline_caps_within_budget_filled_and_exact() -> None:
    from sekron.structure import Structure
    from sekron.structure_search import _baselines as bl

    W = _kernel((24, 16, 3, 3), decay=0.9)
    sp = bl.Spectra(W)
    budget = W.size / 6
    for name in ("tt", "tr", "tucker"):
        st = getattr(Structure, name)(W.shape)
        base = bl.matched_profile(sp, st, budget)
        caps = bl.fit_caps(st, base, budget)
        assert st.n_params(caps) <= budget
        # filled: no bond below its profile can grow by one within the budget
        assert all(caps[c] >= base[c] or st.n_params({**caps, c: caps[c] + 1}) > budget for c in caps)
        options, sk, e = bl.reproducible(W, st, caps)
        err, n_params = _measured(W, Candidate(st, sk.rank, sk.n_params, e, None, W.size, name, options))
        assert n_params == sk.n_params <= budget
        assert err == pytest.approx(e, rel=1e-7, abs=1e-9)


def test_matched_profile_tracks_the_budget() -> None:
    from sekron.structure import Structure
    from sekron.structure_search import _baselines as bl

    W = _kernel((24, 16, 3, 3), decay=0.9)
    sp = bl.Spectra(W)
    st = Structure.tt(W.shape)
    small, large = (st.n_params(bl.fit_caps(st, bl.matched_profile(sp, st, b), b))
                    for b in (W.size / 20, W.size / 3))
    assert small <= W.size / 20 < large <= W.size / 3
    assert bl.matched_profile(sp, st, 10.0 * W.size) == bl.profile(sp, st, 0.0)  # everything fits: full ranks


def test_sketched_screen_is_an_upper_bound() -> None:
    from sekron.structure import Structure
    from sekron.structure_search import _scoring as sc

    W = _kernel((64, 64, 3, 3), decay=0.95)
    st = Structure([(8, 8, 3, 1), (8, 8, 1, 3)])
    P1, P2 = st.factor_sizes
    budget = 10 * (P1 + P2)  # rank 10: the sketch path (min(P1, P2) > 2 * (10 + 8))
    total = float(np.sum(W * W))
    approx = sc.screen_error(W.astype(np.float32), st, budget, total)
    s2 = np.linalg.svd(st.rearrange(W).reshape(P1, P2), compute_uv=False) ** 2
    exact = np.sqrt((total - s2[:10].sum()) / total)
    assert exact - 1e-6 <= approx <= exact + 0.1  # Ritz values never exceed the true ones


@pytest.mark.parametrize("shape", [(40, 12), (12, 40)])
def test_leading_vectors_span_the_top_subspace(shape: tuple[int, int]) -> None:
    from sekron.structure_search import _scoring as sc

    M = RNG.standard_normal(shape)
    U = sc.leading_vectors(M, 5)
    assert U.shape == (shape[0], 5)
    np.testing.assert_allclose(U.T @ U, np.eye(5), atol=1e-10)
    U_ref = np.linalg.svd(M, full_matrices=False)[0][:, :5]
    np.testing.assert_allclose(np.abs(U.T @ U_ref), np.eye(5), atol=1e-8)


def test_pruned_refinements_still_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the split screen forced (TOP_SPLITS = 2), every candidate still reproduces its error."""
    search_mod = importlib.import_module("sekron.structure_search._search")
    monkeypatch.setattr(search_mod, "TOP_SPLITS", 2)
    W = _kernel((32, 48, 3, 3), decay=0.9)
    cands = search(W, ratio=6)
    nested3 = [c for c in cands if c.structure.n_factors == 3 and c.pattern == "nested"]
    assert 1 <= len(nested3) <= 2 * search_mod.TOP_GRIDS
    assert {c.baseline for c in cands if c.baseline} == set(BASELINES)
    assert all(c.params <= W.size / 6 for c in cands)
    for cand in cands:
        err, n_params = _measured(W, cand)
        assert n_params == cand.params
        assert err == pytest.approx(cand.error, rel=1e-7, abs=1e-9), (cand.structure, cand.pattern, cand.rank)


def test_ladder_families_for_compress() -> None:
    from sekron.search import families

    W = _kernel((16, 12, 3, 3))
    ladder = [W.size / r for r in (2, 4, 8)]
    fams = families(W, W.size / 4, (2, 3), ("nested", "chain", "cp", "tucker"), ladder=ladder)
    caps = [f for f in fams if f.kind == "caps"]
    assert {f.baseline for f in caps} - {None} == {"tt", "tr", "tucker"}  # None: whole-mode Tucker grids
    for f in caps:
        assert len(f.params) >= 3
        for i in range(len(f.params)):
            err, n_params = _measured(W, Candidate(f.structure, f.rank(i), int(f.params[i]), float(f.err[i]), None,
                                                   W.size, f.baseline, f.options(i)))
            assert n_params == f.params[i] and err == pytest.approx(f.err[i], rel=1e-7, abs=1e-9)


def test_split_screen_keeps_the_best_refinement(monkeypatch: pytest.MonkeyPatch) -> None:
    """The screen's top splits contain the best nested S = 3 refinement found by scoring all of them."""
    search_mod = importlib.import_module("sekron.structure_search._search")
    W = RNG.standard_normal((32, 48, 3, 3))

    def best_nested3(top_splits: int) -> float:
        monkeypatch.setattr(search_mod, "TOP_SPLITS", top_splits)
        return min(c.error for c in search(W, ratio=4, patterns=("nested",)) if c.structure.n_factors == 3)

    assert best_nested3(4) == pytest.approx(best_nested3(10_000), rel=1e-9)


def test_whole_mode_grids_are_searched_and_exact() -> None:
    """CP and Tucker of the kernel seen as (F, C, kh*kw) are candidates, with reproducible errors."""
    from sekron.structure import Structure
    from sekron.structure_search._grouped import grouped_grids, set_partitions

    assert len(set_partitions(range(4), 2)) == 7 and len(set_partitions(range(4), 3)) == 6
    assert ((6, 1, 1, 1), (1, 5, 1, 1), (1, 1, 3, 3)) in grouped_grids((6, 5, 3, 3), 3)
    assert all(not Structure(g).is_axis_aligned for g in grouped_grids((6, 5, 3, 3), 3))
    W = np.random.default_rng(3).standard_normal((12, 10, 3, 3))
    cands = search(W, ratio=4)
    grouped = [c for c in cands if c.baseline is None
               and all(all(a in (1, d) for a, d in zip(s, W.shape)) for s in c.structure.factor_shapes)
               and not c.structure.is_axis_aligned]
    patterns = {c.structure.pattern for c in grouped}
    assert {"cp", "tucker"} <= patterns
    assert any(c.structure.factor_shapes[:3] == ((12, 1, 1, 1), (1, 10, 1, 1), (1, 1, 3, 3)) for c in grouped)
    for c in grouped:
        assert c.params <= W.size / 4
        sk = c.decompose(W)
        true = np.linalg.norm(W - np.asarray(sk.to_tensor())) / np.linalg.norm(W)
        assert abs(true - c.error) < 1e-8 and sk.n_params == c.params
