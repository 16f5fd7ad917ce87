"""method="sekron" scores its classical baselines on the single-format methods' fine ladder (FINE_BASELINES):
every rank point of method "cp" / "tt" / "tr" / "tucker" is among its candidates."""

from __future__ import annotations

import numpy as np
import pytest
from search_helpers import decaying_kernel

from sekron.structure_search import _layer

W = decaying_kernel(np.random.default_rng(3), (8, 6, 3, 3))


def _points(fams: list, baseline: str) -> dict[tuple, float]:
    """(factor shapes, ranks) -> error of the baseline's points of at most half the dense size (the octave-chain
    cp fits skip the ladder's top budget, the dense size itself, where the dense layer is the exact choice)."""
    return {(f.structure.factor_shapes, tuple(int(r) for r in f.ranks[i])): float(f.err[i])
            for f in fams if f.baseline == baseline for i in range(len(f.params)) if f.params[i] <= W.size / 2}


@pytest.mark.parametrize("ratio", [4, 10])
def test_sekron_holds_every_baseline_point_of_the_single_format_methods(ratio: int,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_layer, "FINE_BASELINES", True)
    sek = _layer.layer_families(W, W.size / ratio, "sekron")
    for method in ("cp", "tt", "tucker"):
        own = _points(_layer.layer_families(W, W.size / ratio, method), method)
        got = _points(sek, method)
        assert own and set(own) <= set(got)
        for k, e in own.items():  # the same problem and rank; cp fits may start elsewhere (octave chains)
            assert got[k] == pytest.approx(e, rel=0.05, abs=1e-9)


def test_without_fine_baselines_sekron_has_fewer_baseline_points(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_layer, "FINE_BASELINES", True)
    fine = _points(_layer.layer_families(W, W.size / 10, "sekron"), "cp")
    monkeypatch.setattr(_layer, "FINE_BASELINES", False)
    coarse = _points(_layer.layer_families(W, W.size / 10, "sekron"), "cp")
    assert len(coarse) < len(fine)
