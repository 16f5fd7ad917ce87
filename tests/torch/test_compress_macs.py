"""compress(budget="macs"): the ratio divides the MACs of the deployed model (to_standard), counted exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from sekron.structure import Structure  # noqa: E402
from sekron.structure_search import _scoring as sc  # noqa: E402
from sekron.torch import SeKronConv2d, SeKronLinear, compress, deployed_cost, to_standard  # noqa: E402
from sekron.torch._allocate import Frontier  # noqa: E402
from sekron.torch.calibrate import counted_macs  # noqa: E402
from sekron.torch.cli import compress_main  # noqa: E402
from sekron.torch.export import candidate_deployment  # noqa: E402

SHAPE = (1, 3, 10, 10)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding="same", dilation=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16 * 2 * 2, 16),
    ).eval()



@pytest.fixture(scope="module")
def compressed() -> dict[float, tuple[nn.Module, object]]:
    net = _net()
    return {r: compress(net, r, budget="macs", input_shape=SHAPE, min_kernel_size=512, progress=False, n_jobs=1)
            for r in (2.0, 3.0)}


@pytest.mark.parametrize("ratio", [2.0, 3.0])
def test_deployed_macs_are_counted_exactly_and_meet_the_ratio(compressed: dict, ratio: float) -> None:
    small, report = compressed[ratio]
    net = _net()
    x = torch.randn(*SHAPE)
    plain = to_standard(small)
    assert all(type(m).__module__.startswith("torch.nn.") for m in plain.modules())
    dense_macs, deployed = counted_macs(net, x), counted_macs(plain, x)
    assert report.totals["macs_before"] == dense_macs
    assert report.totals["deployed_macs"] == deployed  # the report counts what to_standard deploys
    assert dense_macs / deployed >= ratio * (1 - 1e-9)
    assert report.totals["deployed_macs_ratio"] == pytest.approx(dense_macs / deployed)
    assert report.totals["deployed_params"] == sum(int(p.numel()) for p in plain.parameters())
    assert report.totals["budget"] == "macs" and report.totals["layers_compressed"] >= 1
    for row in report:  # per layer: the deployed module holds what the row says
        mod = plain.get_submodule(row["name"])
        weights = sum(int(m.weight.numel()) for m in mod.modules() if isinstance(m, (nn.modules.conv._ConvNd,
                                                                                        nn.Linear)))
        assert row["deployed_params"] == weights
        if row["status"] == "compressed":  # factorized stages, cheaper than the dense layer
            assert isinstance(mod, nn.Sequential) and row["deployed_macs"] < row["macs_before"]
    text = str(report)
    assert "deployed MACs" in text and "fewer MACs" in text


@pytest.mark.parametrize("ratio", [2.0, 3.0])
def test_deployed_model_equals_the_sekron_model(compressed: dict, ratio: float) -> None:
    small, _ = compressed[ratio]
    x = torch.randn(4, *SHAPE[1:])
    with torch.no_grad():
        torch.testing.assert_close(to_standard(small)(x), small(x), atol=1e-5, rtol=1e-5)


def test_calibration_gives_the_shapes_and_fits_outputs() -> None:
    net = _net()
    torch.manual_seed(1)
    x = torch.randn(8, *SHAPE[1:])
    small, report = compress(net, 2.0, budget="macs", calibration=x, allocation="error", min_kernel_size=512,
                             fit_steps=3, progress=False, n_jobs=1)
    plain = to_standard(small)
    assert report.totals["deployed_macs"] == counted_macs(plain, x[:1])
    assert report.totals["deployed_macs_ratio"] >= 2.0
    assert any(r.get("output_error") is not None for r in report)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), small(x), atol=1e-5, rtol=1e-5)


def test_sensitivity_allocation_spends_macs() -> None:
    net = _net()
    torch.manual_seed(2)
    x = torch.randn(8, *SHAPE[1:])
    small, report = compress(net, 2.0, budget="macs", calibration=x, allocation="sensitivity", sensitivity_steps=0,
                             fit_steps=2, min_kernel_size=512, progress=False, n_jobs=1)
    assert report.totals["deployed_macs"] == counted_macs(to_standard(small), x[:1])
    assert report.totals["deployed_macs_ratio"] >= 2.0  # measured damages keep the frontier's MAC costs


def test_params_budget_is_unchanged_and_reports_deployment() -> None:
    net = _net()
    small, report = compress(net, 3.0, input_shape=SHAPE, min_kernel_size=512, method="tucker", progress=False,
                             n_jobs=1)
    assert report.totals["budget"] == "params" and report.totals["ratio"] >= 3.0 * 0.999
    plain = to_standard(small)
    assert report.totals["deployed_macs"] == counted_macs(plain, torch.zeros(SHAPE))
    assert report.totals["deployed_params"] == sum(int(p.numel()) for p in plain.parameters())


@pytest.mark.parametrize("case", [
    ((4, 4, 3, 1), (2, 2, 1, 3), (2, 2, 1, 1)),  # chain: shuffles and grouped stages
    ((1, 16, 1, 1), (16, 1, 3, 3)),  # the two-conv low-rank pair
    ((4, 2, 1, 3), (4, 8, 3, 1)),
])
@pytest.mark.parametrize("conv_kw", [dict(padding=1), dict(padding=2, stride=2), dict(padding="same", dilation=2)])
def test_deployed_cost_matches_the_deployed_modules(case: tuple, conv_kw: dict) -> None:
    """deployed_cost and candidate_deployment price exactly what to_standard builds (hooks count the MACs)."""
    torch.manual_seed(0)
    dense = nn.Conv2d(16, 16, 3, **conv_kw)
    st = Structure(list(case), "chain" if len(case) == 3 else "nested")
    rank = {lab: 2 for lab in st.bond_labels}
    x = torch.randn(2, 16, 11, 9)
    macs, weights, order = candidate_deployment(st, rank, dense, tuple(x.shape))
    for impl in ("auto", "factorized"):
        layer = SeKronConv2d.from_conv(dense, st, rank=rank, implementation="factorized", order=order)
        plain = to_standard(layer, implementation=impl)
        got = deployed_cost(layer, tuple(x.shape), impl)
        assert got == (counted_macs(plain, x), sum(int(m.weight.numel()) for m in plain.modules()
                                                if isinstance(m, nn.Conv2d)))
        if impl == "auto":
            assert got == (macs, weights)
        with torch.no_grad():
            torch.testing.assert_close(plain(x), layer(x), atol=1e-5, rtol=1e-5)


def test_linear_deployed_cost_counts_block_diagonal_stages() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(16, 8)
    st = Structure([(2, 4), (4, 4)], "nested")
    layer = SeKronLinear.from_linear(lin, st, rank={lab: 2 for lab in st.bond_labels}, implementation="factorized")
    x = torch.randn(3, 16)
    plain = to_standard(layer)
    assert deployed_cost(layer, tuple(x.shape)) == (counted_macs(plain, x), sum(int(m.weight.numel()) for m in
                                                                             plain.modules()
                                                                             if isinstance(m, nn.Linear)))


def test_frontier_drops_points_not_cheaper_than_dense() -> None:
    st = Structure([(1, 4, 1, 1), (4, 1, 3, 3)], "nested")
    fam = sc._family(st, "spectrum", [8, 16, 24], [0.5, 0.2, 0.1], [[1], [2], [3]])
    f = Frontier.from_families([fam], 100, lambda fm, i: [40, 100, 150][i])
    assert list(f.cost) == [40, 100] and f.refs[-1] is None and f.dense == 100
    assert np.allclose(f.err2, [0.25, 0.0])
    assert f.candidate(0).params == 8 and f.candidate(0).dense_params == 144


def test_hostile_budget_inputs() -> None:
    net = _net()
    with pytest.raises(ValueError, match="budget must be one of"):
        compress(net, 2.0, budget="flops", input_shape=SHAPE, progress=False)
    with pytest.raises(ValueError, match="input_shape"):
        compress(net, 2.0, budget="macs", progress=False)
    with pytest.raises(ValueError, match="structures > 1"):
        compress(net, 2.0, budget="macs", input_shape=SHAPE, structures=2, progress=False)
    with pytest.raises(ValueError, match="implementation='dense'"):
        compress(net, 2.0, budget="macs", input_shape=SHAPE, implementation="dense", progress=False)
    with pytest.raises(ValueError, match="out of reach"):  # tucker over all four axes never deploys cheaper
        compress(net, 2.0, budget="macs", input_shape=SHAPE, method="tucker", min_kernel_size=512, progress=False)
    with pytest.raises(ValueError, match="MACs that stay dense"):
        compress(net, 2.0, budget="macs", input_shape=SHAPE, include=["6"], progress=False)


def test_cli_budget_macs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "arch.py").write_text("import torch\ndef build():\n    torch.manual_seed(0)\n"
                                      "    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), "
                                      "torch.nn.ReLU(), torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(), "
                                      "torch.nn.Conv2d(16, 16, 3, padding=1))\n")
    arch = f"{tmp_path / 'arch.py'}:build"
    src, out, rep = tmp_path / "m.pt", tmp_path / "o.pt", tmp_path / "r.json"
    ns: dict = {}
    exec((tmp_path / "arch.py").read_text(), ns)
    torch.save(ns["build"]().state_dict(), src)
    assert compress_main([str(src), "--ratio", "2", "-o", str(out), "--arch", arch, "--budget", "macs",
                          "--quiet", "--min-kernel-size", "100"]) == 2
    assert "input_shape" in capsys.readouterr().err
    assert compress_main([str(src), "--ratio", "2", "-o", str(out), "--arch", arch, "--budget", "macs", "--quiet",
                          "--min-kernel-size", "100", "--input-shape", "1,3,10,10", "--report", str(rep),
                          "--jobs", "1"]) == 0
    totals = json.loads(rep.read_text())["totals"]
    assert totals["budget"] == "macs" and totals["deployed_macs_ratio"] >= 2.0


def test_pricing_in_worker_processes_gives_the_same_model(compressed: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """Above PRICE_PARALLEL_POINTS the candidates are priced in worker processes: same frontier, same model."""
    import importlib

    compress_module = importlib.import_module("sekron.torch.compression")
    monkeypatch.setattr(compress_module, "PRICE_PARALLEL_POINTS", 0)
    small, report = compress(_net(), 2.0, budget="macs", input_shape=SHAPE, min_kernel_size=512, progress=False,
                             n_jobs=2)
    ref_small, ref = compressed[2.0]
    assert report.totals["deployed_macs"] == ref.totals["deployed_macs"]
    assert [row["structure"] for row in report] == [row["structure"] for row in ref]
    got, want = small.state_dict(), ref_small.state_dict()
    assert got.keys() == want.keys()
    for k in want:
        if isinstance(want[k], torch.Tensor):
            torch.testing.assert_close(got[k], want[k], rtol=0, atol=0)
        else:  # the layers' extra state (structure, plan)
            assert got[k] == want[k]
    x = torch.randn(*SHAPE)
    torch.testing.assert_close(to_standard(small)(x), to_standard(ref_small)(x), rtol=0, atol=0)


def test_layer_geometry_refuses_what_it_cannot_price() -> None:
    from sekron.torch.export import layer_geometry

    with pytest.raises(TypeError, match="Conv1d/2d/3d or Linear, got ReLU"):
        layer_geometry(nn.ReLU())


def test_budget_macs_deploys_channel_counts_in_multiples(monkeypatch: pytest.MonkeyPatch) -> None:
    """With budget="macs" every bond size (a channel count between two deployed convs) is a multiple of
    DEPLOY_RANK_MULTIPLE or below it, the ratio still met; DEPLOY_RANK_MULTIPLE = 1 prices every rank."""
    import importlib

    compress_module = importlib.import_module("sekron.torch.compression")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1)).eval()
    shape = (1, 32, 12, 12)
    x = torch.randn(*shape)
    sizes = {}
    for multiple in (8, 1):
        monkeypatch.setattr(compress_module, "DEPLOY_RANK_MULTIPLE", multiple)
        small, _ = compress(net, 3, budget="macs", input_shape=shape, progress=False, n_jobs=1, cache=False,
                            skip_first=False)
        layers = [m for m in small.modules() if isinstance(m, SeKronConv2d)]
        assert layers and counted_macs(net, x) / counted_macs(to_standard(small), x) >= 3 * (1 - 1e-9)
        sizes[multiple] = [r for m in layers for r in m.rank.values()]
        torch.testing.assert_close(to_standard(small)(x), small(x), rtol=1e-4, atol=1e-4)
    assert all(r % 8 == 0 or r < 8 for r in sizes[8]), sizes
    assert any(r % 8 and r > 8 for r in sizes[1]), sizes  # without the rule this model deploys unaligned ranks


def test_thin_keeps_the_aligned_pareto_points() -> None:
    """_thin with a multiple: only aligned rank points, and among them the (params, error) Pareto points."""
    import importlib

    thin = importlib.import_module("sekron.torch.compression")._thin

    class Fam:
        params = np.array([10 * r for r in range(1, 41)])
        err = np.array([1.0 / r for r in range(1, 41)])

        def rank(self, i: int) -> dict[str, int]:
            return {"a": i + 1}

    kept = thin(Fam(), 100, 8)
    assert sorted(Fam().rank(i)["a"] for i in kept) == [1, 2, 3, 4, 5, 6, 7, 8, 16, 24, 32, 40]
    assert len(thin(Fam(), 100, 1)) == 40 and len(thin(Fam(), 5, 8)) <= 5
