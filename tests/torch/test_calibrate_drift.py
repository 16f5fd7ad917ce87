"""Partial drift correction of the output fit (``blend_target``, ``compress.FIT_DRIFT_CORRECTION``).

References are computed the direct way: patches of the actual and dense activations, the
blended target ``c Y + (1 - c) W~ P_h`` written out, output errors measured by running the
layers on the activations.
"""

from __future__ import annotations

import importlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from sekron.torch import SeKronConv2d, compress  # noqa: E402
from sekron.torch.calibrate import (  # noqa: E402
    Grams,
    _augment,
    blend_target,
    dense_matrix,
    output_error,
    patches,
    stream_grams,
)

compress_module = importlib.import_module("sekron.torch.compression")


def _drifted(dtype: torch.dtype) -> tuple[nn.Module, nn.Module, nn.Module, nn.Module, torch.Tensor]:
    """A dense two-conv net, the same net with a perturbed first conv, its second conv, and inputs."""
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 5, 3, padding=1)).to(dtype)
    drifted = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 5, 3, padding=1)).to(dtype)
    drifted.load_state_dict(dense.state_dict())
    with torch.no_grad():
        drifted[0].weight.add_(0.3 * torch.randn_like(drifted[0].weight))
    x = torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(1)).to(dtype)
    return dense, drifted, dense[2], drifted[2], x


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("c", [0.0, 0.3, 1.0])
def test_blend_target_is_the_blended_target(dtype: torch.dtype, c: float) -> None:
    dense, drifted, dl, layer, x = _drifted(dtype)
    grams = stream_grams(dense, dl, drifted, layer, [x], 10 ** 9, torch.Generator().manual_seed(0))
    with torch.no_grad():
        ph = _augment(patches(dl, drifted[:2](x), None))
        pd = _augment(patches(dl, dense[:2](x), None))
    W = dense_matrix(dl)
    target = c * (pd @ W.T) + (1 - c) * (ph @ W.T)  # (positions, F)
    got = blend_target(grams, c)
    torch.testing.assert_close(got.A, ph.T @ ph)
    torch.testing.assert_close(got.G, target.T @ ph)
    assert got.yy == pytest.approx(float((target ** 2).sum()), rel=1e-9)
    assert got.count == grams.count and got.W is grams.W


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_output_error_is_the_measured_error(dtype: torch.dtype) -> None:
    dense, drifted, dl, layer, x = _drifted(dtype)
    grams = stream_grams(dense, dl, drifted, layer, [x], 10 ** 9, torch.Generator().manual_seed(0))
    sek = SeKronConv2d.from_conv(dl, [(5, 2, 3, 1), (1, 3, 1, 3)], rank=2)
    with torch.no_grad():
        y, xh = dl(dense[:2](x)), drifted[:2](x)
    for candidate in (sek, layer):  # a SeKron layer, and the dense layer on the drifted input
        with torch.no_grad():
            got = candidate(xh)
        measured = float(((got - y).double().norm() / y.double().norm()) ** 2)
        assert output_error(candidate, grams) == pytest.approx(measured, rel=1e-4)


@settings(max_examples=25, deadline=None)
@given(c=st.floats(0, 1), n=st.integers(1, 6), f=st.integers(1, 4), m=st.integers(1, 30), seed=st.integers(0, 99))
def test_the_dense_layer_keeps_c_squared_of_its_error(c: float, n: int, f: int, m: int, seed: int) -> None:
    """``c Y + (1 - c) W~ P_h - W~ P_h = c (Y - W~ P_h)``: the dense layer's error scales by ``c^2``;
    any other weight's loss is the directly computed one."""
    g = torch.Generator().manual_seed(seed)
    P = _augment(torch.randn(m, n, generator=g, dtype=torch.float64))
    Y = torch.randn(m, f, generator=g, dtype=torch.float64)
    W = torch.randn(f, n + 1, generator=g, dtype=torch.float64)
    M = torch.randn(f, n + 1, generator=g, dtype=torch.float64)
    grams = Grams(P.T @ P, Y.T @ P, float((Y ** 2).sum()), m, W)
    blended = blend_target(grams, c)

    def loss(gr: Grams, K: torch.Tensor) -> float:
        return float(((K @ gr.A) * K).sum() - 2 * (gr.G * K).sum() + gr.yy)

    scale = 1 + float((Y ** 2).sum()) + float(((P @ W.T) ** 2).sum()) + float(((P @ M.T) ** 2).sum())
    assert loss(blended, W) == pytest.approx(c * c * loss(grams, W), abs=1e-9 * scale)
    T = c * Y + (1 - c) * P @ W.T
    assert loss(blended, M) == pytest.approx(float(((T - P @ M.T) ** 2).sum()), abs=1e-9 * scale)
    assert blended.yy >= 0


@pytest.mark.parametrize("bad", [-0.1, 1.5, True, "half", float("nan")])
def test_blend_target_rejects_bad_corrections(bad: object) -> None:
    grams = Grams(torch.eye(2, dtype=torch.float64), torch.ones(1, 2, dtype=torch.float64), 1.0, 4,
                  torch.ones(1, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="correction must be a number in"):
        blend_target(grams, bad)  # type: ignore[arg-type]


def test_blend_target_needs_the_dense_weight() -> None:
    grams = Grams(torch.eye(2, dtype=torch.float64), torch.ones(1, 2, dtype=torch.float64), 1.0, 4)
    with pytest.raises(ValueError, match="dense layer"):
        blend_target(grams, 0.5)


def _chain() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))


@pytest.mark.parametrize("method", ["sekron", "cp"])
def test_compress_reports_errors_against_the_dense_output(monkeypatch: pytest.MonkeyPatch, method: str) -> None:
    """With ``FIT_DRIFT_CORRECTION = 0`` each layer matches its dense layer on its actual input; the report
    still gives the error against the dense network's output, which is the one measured in the final model
    (exact sequential fit). The first compressed layer sees no drift, so there the correction changes nothing."""
    net, data = _chain(), torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    kw = {"method": method, "calibration": data, "allocation": "error", "fit_steps": 3, "min_kernel_size": 100,
          "progress": False}
    _, plain_report = compress(net, 4, **kw)
    monkeypatch.setattr(compress_module, "FIT_DRIFT_CORRECTION", 0.0)
    small, report = compress(net, 4, **kw)
    rows = [r for r in report if r["status"] == "compressed"]
    plain_rows = [r for r in plain_report if r["status"] == "compressed"]
    assert len(rows) >= 2 and [r["name"] for r in rows] == [r["name"] for r in plain_rows]
    assert rows[0]["output_error"] == pytest.approx(plain_rows[0]["output_error"], rel=1e-6)
    differs = False
    for row, plain_row in zip(rows, plain_rows):
        i = int(row["name"])
        with torch.no_grad():
            y, got = net[: i + 1](data), small[: i + 1](data)
        assert float((got - y).norm() / y.norm()) == pytest.approx(row["output_error"], rel=1e-3)
        # the weight fit is the same in both runs; its error is measured on each run's own drifted input
        differs = differs or abs(row["output_error"] - plain_row["output_error"]) > 1e-3
    assert differs  # a later layer, fitted to a different target, ends elsewhere
    # the plain fit undoes the drift, which is what the sequential error measures
    assert plain_rows[-1]["output_error"] < rows[-1]["output_error"]
