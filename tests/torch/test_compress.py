"""compress: a small CIFAR-style ResNet reaches the ratio, stays finite, and its report adds up."""

from __future__ import annotations

import io

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402, N812
from torch import nn  # noqa: E402

from sekron.torch import SeKronConv2d, SeKronLinear, compress, load_compressed  # noqa: E402


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style: 3x3 stem, three stages (stride-2 downsampling with 1x1 shortcuts), pooled linear head."""

    def __init__(self, width: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = BasicBlock(width, width, 1)
        self.layer2 = BasicBlock(width, 2 * width, 2)
        self.layer3 = BasicBlock(2 * width, 4 * width, 2)
        self.fc = nn.Linear(4 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(F.relu(self.bn1(self.conv1(x))))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def _n(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return ResNet()


@pytest.fixture(scope="module")
def compressed(resnet: nn.Module) -> tuple[nn.Module, object]:
    return compress(resnet, ratio=4, min_kernel_size=256, input_shape=(1, 3, 16, 16), progress=False)


def test_reaches_ratio_and_runs(resnet: nn.Module, compressed: tuple) -> None:
    model, report = compressed
    achieved = _n(resnet) / _n(model)
    assert achieved >= 4 * 0.999 and abs(achieved / 4 - 1) < 0.05
    assert report.totals["ratio"] == pytest.approx(achieved)
    assert any(isinstance(m, SeKronConv2d) for m in model.modules())
    assert not any(isinstance(m, (SeKronConv2d, SeKronLinear)) for m in resnet.modules())  # original untouched
    y = model(torch.randn(4, 3, 16, 16))
    assert y.shape == (4, 10) and torch.isfinite(y).all()
    y.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_report_adds_up(resnet: nn.Module, compressed: tuple) -> None:
    model, report = compressed
    names = [r["name"] for r in report]
    assert names == [n for n, m in resnet.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert report[0]["status"].startswith("skipped: first layer")
    other = _n(resnet) - sum(r["params_before"] for r in report)
    assert other + sum(r["params_after"] for r in report) == report.totals["params_after"] == _n(model)
    assert sum(r["macs_before"] for r in report) == report.totals["macs_before"]
    assert sum(r["macs_after"] for r in report) == report.totals["macs_after"]
    done = [r for r in report if r["status"] == "compressed"]
    assert done and all(0 <= r["error"] <= 1 and r["params_after"] < r["params_before"] for r in done)
    assert report.totals["sq_error"] == pytest.approx(sum(r["error"] ** 2 for r in report))
    for r in done:  # the reported error is the layer's true weight error
        layer = model.get_submodule(r["name"])
        W = resnet.get_submodule(r["name"]).weight
        err = ((layer.sekron_weight().to_tensor() - W).norm() / W.norm()).item()
        assert err == pytest.approx(r["error"], rel=1e-4, abs=1e-6)
    text = str(report)
    assert "layer3.conv2" in text and "total (model)" in text and "uniform per-layer" in text


def test_allocation_beats_uniform(resnet: nn.Module, compressed: tuple) -> None:
    _, report = compressed
    assert report.totals["sq_error"] <= report.totals["uniform_sq_error"] + 1e-12
    _, uni = compress(resnet, ratio=4, min_kernel_size=256, allocation="uniform", progress=False)
    assert uni.totals["sq_error"] == pytest.approx(report.totals["uniform_sq_error"])


def test_classical_method_uses_axis_aligned(resnet: nn.Module) -> None:
    model, report = compress(resnet, ratio=3, method="tt", min_kernel_size=256, progress=False)
    done = [r for r in report if r["status"] == "compressed"]
    assert done and all(r["pattern"] == "chain" and r["baseline"] == "tt" for r in done)
    assert abs(report.totals["ratio"] / 3 - 1) < 0.05
    assert torch.isfinite(model(torch.randn(2, 3, 16, 16))).all()


def test_save_and_load_weights_only(compressed: tuple) -> None:
    model, _ = compressed
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    fresh = load_compressed(ResNet(), torch.load(buf, weights_only=True)).eval()
    x = torch.randn(2, 3, 16, 16)
    assert torch.allclose(fresh(x), model.eval()(x))


def test_grouped_and_include_exclude() -> None:
    net = nn.Sequential(nn.Conv2d(3, 16, 3), nn.Conv2d(16, 32, 3, groups=4), nn.Conv2d(32, 32, 3), nn.Linear(32, 64))
    _, report = compress(net, ratio=2, min_kernel_size=100, exclude=["3"], progress=False)
    status = {r["name"]: r["status"] for r in report}
    assert "groups=4" in status["1"] and status["3"] == "skipped: excluded" and status["2"] == "compressed"
    _, report = compress(net, ratio=1.5, min_kernel_size=100, include=["2"], progress=False)
    assert [r["status"] for r in report if r["name"] == "0"] == ["skipped: not included"]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"ratio": 1}, ValueError, "ratio must be a number > 1"),
        ({"ratio": 4, "include": ["layer1.bn1"]}, TypeError, "cannot replace.*BatchNorm2d"),
        ({"ratio": 4, "include": ["nothing*"]}, ValueError, "matches no module"),
        ({"ratio": 1000}, ValueError, "impossible"),
        ({"ratio": 4, "method": "svd"}, ValueError, "method must be one of"),
        ({"ratio": 4, "min_kernel_size": 10**9}, ValueError, "no layer is eligible"),
    ],
)
def test_bad_inputs(resnet: nn.Module, kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        compress(resnet, progress=False, **{"min_kernel_size": 256, **kwargs})


def test_digits_tutorial_runs_small(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "digits_compression.py"
    spec = importlib.util.spec_from_file_location("digits_compression", path)
    assert spec is not None and spec.loader is not None
    tutorial = importlib.util.module_from_spec(spec)
    sys.modules["digits_compression"] = tutorial  # dataclasses look their module up
    spec.loader.exec_module(tutorial)
    X, y = tutorial.synthetic_digits(200)
    base, results = tutorial.run(X, y, ratios=(3.0,), methods=("sekron", "tt"), width=8, epochs=20, batch_size=16)
    assert base > 0.3  # well above chance (0.1) on the synthetic templates
    assert [r.method for r in results] == ["sekron", "tt"]
    for r in results:
        assert abs(r.achieved / 3 - 1) < 0.05 and 0 <= r.acc_compressed <= 1 and 0 <= r.acc_finetuned <= 1
    text = tutorial.table(base, results, 3.0)
    assert "| sekron |" in text and "| tt |" in text
    pytest.importorskip("matplotlib")
    tutorial.plot(base, results, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 1000
