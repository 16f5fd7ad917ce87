"""search: candidates within budget, sorted, baselines present, predicted error == measured error."""

from __future__ import annotations

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
