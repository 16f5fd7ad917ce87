"""The ddddocr benchmark's sensitivity memo: measured once, reused bit for bit, counted passes."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from sekron.torch import compress  # noqa: E402

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
pytestmark = pytest.mark.skipif(not (BENCH / "ddddocr_calibrated.py").exists(), reason="benchmarks/ not shipped")


def _bench():
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module("ddddocr_calibrated")
    finally:
        sys.path.remove(str(BENCH))


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 24, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(24, 24, 3, padding=1), nn.ReLU(), nn.Conv2d(24, 8, 1)).eval()


def _run(x: torch.Tensor, traced: bool = False) -> tuple[nn.Module, object]:
    net = torch.fx.symbolic_trace(_net()) if traced else _net()
    return compress(net, 2.0, calibration=x, allocation="sensitivity", objective="weight", progress=False,
                    n_jobs=1, batch_size=2)


@pytest.mark.parametrize("traced", [False, True])
def test_memo_measures_once_then_reuses_the_same_damages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         traced: bool) -> None:
    bench = _bench()
    comp = importlib.import_module("sekron.torch.compression")
    sens = importlib.import_module("sekron.torch._sensitivity")
    monkeypatch.setattr(comp, "sensitivity_frontiers", comp.sensitivity_frontiers)  # restored after the test
    # the memo records points of each layer's own frontier: no per-pattern frontiers (off at ddddocr's budget="macs")
    monkeypatch.setattr(sens, "PATTERNS", False)
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    plain, plain_rep = _run(x, traced)  # no memo: the reference
    path = str(tmp_path / "sens.json")
    info = bench.memo_sensitivity(path, 0)
    first, first_rep = _run(x, traced)
    assert info["sens_reused"] is False and info["sens_s"] > 0
    measured = sum(len(layer["points"]) for layer in json.load(open(path))["layers"])
    assert measured > 0
    if traced:  # the reference pass, one full pass per measured layer (replay), then partial passes
        layers = sum(1 for layer in json.load(open(path))["layers"] if layer["points"])
        assert info["batch_passes"] == 2 * (1 + layers) and info["partial_batch_passes"] == 2 * measured
        assert info["partial_image_passes"] == 4 * measured
    else:
        assert info["batch_passes"] == 2 * (1 + measured) and info["image_passes"] == 4 * (1 + measured)
        assert info["partial_batch_passes"] == 0
    info2 = bench.memo_sensitivity(path, 0)

    def no_pass(*a: object, **k: object) -> None:
        raise AssertionError("a reused memo runs no forward pass")

    monkeypatch.setattr(sens, "_outputs", no_pass)
    monkeypatch.setattr(sens._Replay, "outputs", no_pass)
    second, second_rep = _run(x, traced)
    assert info2["sens_reused"] is True and info2["image_passes"] == info["image_passes"]
    for a, b, c in zip(plain_rep, first_rep, second_rep):
        assert a["status"] == b["status"] == c["status"]
        assert a.get("sensitivity") == b.get("sensitivity") == c.get("sensitivity")
    with torch.no_grad():
        ya, yb, yc = plain(x), first(x), second(x)
    assert torch.equal(ya, yb) and torch.equal(yb, yc)
    with pytest.raises(ValueError, match="sensitivity_steps=0"):
        bench.memo_sensitivity(path, 3)


class _Head(nn.Module):
    """A (batch, anchors, 6) output like ddddocr's: box (4), objectness, class score."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).flatten(2).transpose(1, 2)
        return torch.cat([y[..., :4], torch.sigmoid(y[..., 4:])], -1)


def test_det_scores_returns_scores_and_weighted_boxes_and_raw_output_restores() -> None:
    bench = _bench()
    torch.manual_seed(0)
    gm = torch.fx.symbolic_trace(_Head().eval())
    x = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(2))
    det = bench.det_scores(gm)
    assert isinstance(det, torch.fx.GraphModule) and dict(det.named_modules()).keys() == dict(
        gm.named_modules()).keys()
    with torch.no_grad():
        raw = gm(x)
        score = raw[..., 4:5] * raw[..., 5:]
        assert torch.equal(det(x), torch.cat([score, score * raw[..., :4]], -1))
        small = torch.fx.GraphModule(det, det.graph)
        small.conv = nn.Conv2d(3, 6, 3, padding=1)  # a "compressed" layer
        back = bench.raw_output(small, gm)
        assert torch.equal(back(x), torch.cat([small.conv(x).flatten(2).transpose(1, 2)[..., :4],
                                               torch.sigmoid(small.conv(x).flatten(2).transpose(1, 2)[..., 4:])], -1))
        assert torch.equal(gm(x), raw)  # the original is untouched
    assert bench.det_scores(small).conv is small.conv  # training the det view (distillation) trains ``small``


def test_frozen_dense_leaves_only_the_sekron_layers_to_distillation() -> None:
    bench = _bench()
    from sekron.torch import LAYERS, distill

    torch.manual_seed(0)
    dense = _net()
    small, _ = compress(dense, 2.0, progress=False, n_jobs=1, exclude=["0"])  # the first conv stays dense
    kinds = tuple(LAYERS.values())
    sekron = [n for n, m in small.named_modules() if isinstance(m, kinds)]
    assert sekron and "0" not in sekron
    before = {k: v.detach().clone() for k, v in small.named_parameters()}
    frozen = bench.frozen_dense(small)
    assert {id(p) for p in frozen} == {id(p) for n, p in small.named_parameters() if n.split(".")[0] not in sekron}
    assert frozen and all(not p.requires_grad for p in frozen)
    x = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    distill(small, dense, x, epochs=2, lr=1e-2, batch_size=4, progress=False)
    after = dict(small.named_parameters())
    for k, v in before.items():
        if k.split(".")[0] in sekron:
            continue
        assert torch.equal(after[k], v), k  # dense layers untouched
    assert any(not torch.equal(after[k], v) for k, v in before.items() if k.split(".")[0] in sekron)
    assert bench.frozen_dense(small) == []  # already frozen: nothing new to switch off


class OnnxReshape(nn.Module):
    """onnx2torch's Reshape (the class name is what det_scores looks for): the shape comes in as a tensor."""

    def forward(self, x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
        return torch.reshape(x, torch.Size(shape.tolist()))


class _FileHead(nn.Module):
    """ddddocr's head as the file has it: each level's (B, 6, H, W) reshaped to the constant (1, 6, -1)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.Reshape_1 = OnnxReshape()
        self.register_buffer("shape", torch.tensor([1, 6, -1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        y = torch.cat([y[:, :4], torch.sigmoid(y[:, 4:])], 1)
        return self.Reshape_1(y, self.shape).transpose(1, 2)


def test_det_scores_is_per_image_at_any_batch_size() -> None:
    bench = _bench()
    torch.manual_seed(0)
    class Tracer(torch.fx.Tracer):  # as onnx2torch's graphs: the Reshape is one call_module node
        def is_leaf_module(self, m: nn.Module, name: str) -> bool:
            return isinstance(m, OnnxReshape) or super().is_leaf_module(m, name)

    head = _FileHead().eval()
    gm = torch.fx.GraphModule(head, Tracer().trace(head))
    assert any(n.op == "call_module" and n.target == "Reshape_1" for n in gm.graph.nodes)
    x = torch.randn(3, 3, 5, 5, generator=torch.Generator().manual_seed(4))
    det = bench.det_scores(gm)
    with torch.no_grad():
        singles = [gm(x[i:i + 1]) for i in range(3)]
        views = torch.cat([det(x[i:i + 1]) for i in range(3)])
        batched = det(x)
        mixed = gm(x)  # the file's own graph at batch 3: one (1, 75, 6) output, the images' channels interleaved
    assert mixed.shape == (1, 75, 6)
    assert batched.shape == (3, 25, 5)
    torch.testing.assert_close(batched, views, rtol=0, atol=1e-6)
    for i, raw in enumerate(singles):  # each image's view is its own scores and score-weighted boxes
        score = raw[..., 4:5] * raw[..., 5:]
        torch.testing.assert_close(batched[i:i + 1], torch.cat([score, score * raw[..., :4]], -1), rtol=0, atol=1e-6)
    assert torch.equal(bench.raw_output(det, gm)(x[:1]), singles[0])  # the raw output keeps the file's graph
