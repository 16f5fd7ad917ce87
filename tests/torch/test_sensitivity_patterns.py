"""Sensitivity allocation along each bond pattern's own frontier: a pattern dominated in weight error but
damaging the output less is measured, kept and chosen."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from sekron.structure import Structure  # noqa: E402
from sekron.structure_search._scoring import _family  # noqa: E402
from sekron.torch import _sensitivity as sens  # noqa: E402
from sekron.torch import compress  # noqa: E402
from sekron.torch._allocate import Frontier, allocate  # noqa: E402


class _Scaled(nn.Module):
    """The dense layer's output times ``1 + s``: its relative squared damage to the network output is ``s**2``."""

    def __init__(self, dense: nn.Module, s: float) -> None:
        super().__init__()
        self.dense, self.s = dense, s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(x) * (1.0 + self.s)


def _setup() -> tuple[nn.Module, list, Frontier, dict]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 16))
    cp = _family(Structure.cp((4, 4)), "spectrum", [20, 40, 60, 80], [0.6, 0.4, 0.2, 0.1], [[1], [2], [3], [4]])
    chain = _family(Structure.tt((4, 4)), "spectrum", [22, 44, 66, 88], [0.7, 0.5, 0.3, 0.15],
                    [[1], [2], [3], [4]])
    # output damage (relative squared change) per (pattern, params): chain has more weight error, less damage
    damage = {("cp", 20): 0.5, ("cp", 40): 0.3, ("cp", 60): 0.2, ("cp", 80): 0.1,
              ("chain", 22): 0.2, ("chain", 44): 0.05, ("chain", 66): 0.02, ("chain", 88): 0.01}
    fams = [cp, chain]
    return net, fams, Frontier.from_families(fams, 256), damage


def _measure(patterns: bool) -> tuple[Frontier, list]:
    net, fams, f, damage = _setup()
    built = []

    def build(name: str, cand: object) -> nn.Module:
        key = (cand.structure.pattern, int(cand.params))  # type: ignore[attr-defined]
        built.append(key)
        return _Scaled(net.get_submodule(name), damage[key] ** 0.5)

    x = [torch.randn(8, 16, generator=torch.Generator().manual_seed(1))]
    out = sens.sensitivity_frontiers(net, ["0"], [f], build, x, families=[fams], patterns=patterns)
    return out[0], built


def test_a_pattern_dominated_in_weight_error_is_measured_and_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sens, "PATTERNS", True)
    _, _, f, damage = _setup()
    assert f.params.tolist() == [20, 40, 60, 80, 256]  # chain's points are all dominated in weight error
    old, built_old = _measure(False)
    assert {k[0] for k in built_old} == {"cp"}
    new, built = _measure(True)
    assert {k[0] for k in built} == {"cp", "chain"}
    # every measured point in the frontier's cost unit (parameters), with its own structure and measured damage
    for c, d, ref in zip(new.params[:-1], new.err2[:-1], new.refs[:-1]):
        assert ref is not None and int(ref[0].params[ref[1]]) == int(c)
        key = (str(ref[0].structure.pattern), int(c))
        assert key in damage
        if key in built:  # measured; else interpolated between the pattern's own measured neighbours
            assert d == pytest.approx(damage[key], rel=1e-5)
        else:
            assert key == ("chain", 66) and damage[("chain", 88)] < d < damage[("chain", 44)]
    assert [str(r[0].structure.pattern) for r in new.refs[1:-1]] == ["chain"] * 4  # cp kept only at its cheapest
    assert new.refs[-1] is None and new.err2[-1] == 0 and new.params[-1] == 256
    # under a 50-parameter budget: chain at 44 (damage 0.05) instead of cp at 40 (damage 0.3)
    i_old, i_new = allocate([old], 50)[0], allocate([new], 50)[0]
    assert int(old.params[i_old]) == 40 and old.err2[i_old] == pytest.approx(0.3, rel=1e-5)
    assert int(new.params[i_new]) == 44 and new.err2[i_new] == pytest.approx(0.05, rel=1e-5)
    # the module switch turns it off
    monkeypatch.setattr(sens, "PATTERNS", False)
    off, _ = _measure(True)
    assert off.params.tolist() == old.params.tolist() and np.allclose(off.err2, old.err2)


def test_compress_passes_patterns_only_with_a_parameter_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    comp = __import__("sekron.torch.compression", fromlist=["x"])
    seen: list[tuple[bool, list[Frontier], list[Frontier]]] = []
    measure = comp.sensitivity_frontiers

    def spy(model, names, frontiers, *a, **k):  # type: ignore[no-untyped-def]
        out = measure(model, names, frontiers, *a, **k)
        seen.append((k["patterns"], list(frontiers), out))
        return out

    monkeypatch.setattr(comp, "sensitivity_frontiers", spy)
    monkeypatch.setattr(sens, "PATTERNS", True)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
    x = torch.randn(2, 4, 5, 5, generator=torch.Generator().manual_seed(1))
    kw = {"calibration": x, "skip_first": False, "progress": False, "n_jobs": 1, "objective": "weight",
          "min_kernel_size": 1}
    _, rep = compress(net, 3, **kw)
    compress(net, 2, budget="macs", implementation="factorized", **kw)
    assert [s[0] for s in seen] == [True, False]
    assert rep.totals["ratio"] >= 3
    for patterns, fronts, outs in seen:
        for f, g in zip(fronts, outs):
            assert np.all(np.diff(g.params) > 0) and np.all(np.diff(g.err2) < 0) and g.params[-1] == f.dense
            for c, ref in zip(g.params[:-1], g.refs[:-1]):
                assert ref is not None
                if patterns:  # parameters: every point priced by its own family
                    assert int(ref[0].params[ref[1]]) == int(c)
                else:  # deployed MACs: only points of the MAC frontier (its own cost unit)
                    assert int(c) in f.cost.tolist()


_pts = st.lists(st.tuples(st.integers(1, 99), st.floats(0.0, 1.0)), min_size=0, max_size=8)


@settings(max_examples=60, deadline=None)
@given(st.lists(_pts, min_size=1, max_size=4))
def test_merged_is_the_pareto_set_of_all_points(fronts_pts: list) -> None:
    fam = _family(Structure.cp((4, 4)), "spectrum", [1], [0.0], [[1]])
    fronts = []
    for pts in fronts_pts:
        pts = sorted(set(pts))
        fronts.append(Frontier(np.asarray([p[0] for p in pts] + [100], dtype=np.int64),
                               np.asarray([p[1] for p in pts] + [0.0]), [(fam, 0)] * len(pts) + [None], 100))
    g = sens._merged(fronts, 100)
    assert g.params[-1] == 100 and g.err2[-1] == 0 and g.refs[-1] is None
    assert np.all(np.diff(g.params) > 0) and np.all(np.diff(g.err2[:-1]) < 0)
    every = {(int(c), float(d)) for f in fronts for c, d in zip(f.params[:-1], f.err2[:-1])}
    kept = set(zip(g.params[:-1].tolist(), g.err2[:-1].tolist()))
    assert kept <= every
    for c, d in every:  # every input point is matched or beaten by a kept one no more costly
        assert any(kc <= c and kd <= d for kc, kd in kept)
