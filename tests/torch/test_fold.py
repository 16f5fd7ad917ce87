"""BatchNorm folding: the folded model computes what the original computes (float64 reference), and only then."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from sekron.torch import compress  # noqa: E402
from sekron.torch.fold import fold_batchnorm  # noqa: E402

F = nn.functional


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so a wrong fold shows."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 3 + 0.1)
                if m.affine:
                    m.weight.copy_(torch.randn(m.num_features, generator=g))
                    m.bias.copy_(torch.randn(m.num_features, generator=g))
    return model


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(4, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8, affine=False)
        self.short = nn.Sequential(nn.Conv2d(4, 8, 1), nn.BatchNorm2d(8))
        self.fc = nn.Linear(8, 6)
        self.bnf = nn.BatchNorm1d(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)) + self.short(x))
        return self.bnf(self.fc(out.mean((2, 3))))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fold_matches_original(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    net = _randomize_bn(Block()).to(dtype).eval()
    x = torch.randn(5, 4, 7, 7, dtype=dtype)
    folded = copy.deepcopy(net)
    pairs = fold_batchnorm(folded, x)
    assert sorted(pairs) == [("conv1", "bn1"), ("conv2", "bn2"), ("fc", "bnf"), ("short.0", "short.1")]
    assert all(isinstance(folded.get_submodule(b), nn.Identity) for _, b in pairs)
    assert folded.conv1.bias is not None and folded.conv1.weight.dtype == dtype
    # float64 reference on new inputs (not the ones the fold was checked on)
    x2 = torch.randn(3, 4, 9, 9, dtype=torch.float64)
    with torch.no_grad():
        want = copy.deepcopy(net).double()(x2)
        got = copy.deepcopy(folded).double()(x2)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert torch.allclose(got, want, rtol=tol, atol=tol * float(want.abs().max()))
    # parameters: 2C per BatchNorm (affine) gone, C bias added where the conv had none
    n = sum(p.numel() for p in net.parameters()) - sum(p.numel() for p in folded.parameters())
    assert n == (16 - 8) + (0 - 0) + (16 - 0) + (12 - 0)
    # the caller's model is not touched by folding a copy, and flags are kept
    assert isinstance(net.bn1, nn.BatchNorm2d) and not folded.training


class Reuse(nn.Module):
    """The conv's output is used twice: folding the BatchNorm would change the second use."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.bn2 = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn2(self.conv2(self.bn(y) + y))


class Shared(nn.Module):
    """One conv called twice (each time into a different BatchNorm)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn_a = nn.BatchNorm2d(3)
        self.bn_b = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn_b(self.conv(self.bn_a(self.conv(x))))


def test_fold_refuses_inexact_pairs() -> None:
    torch.manual_seed(1)
    x = torch.randn(4, 3, 6, 6)
    net = _randomize_bn(Reuse()).eval()
    want = net(x)
    got = fold_batchnorm(net, x)
    assert got == [("conv2", "bn2")]  # conv -> bn is refused by the float64 check
    assert isinstance(net.bn, nn.BatchNorm2d)
    assert torch.allclose(net(x), want, atol=1e-5)
    shared = _randomize_bn(Shared()).eval()
    want = shared(x)
    assert fold_batchnorm(shared, x) == []
    assert torch.equal(shared(x), want)


def test_fold_train_mode_needs_force() -> None:
    net = _randomize_bn(Block())  # training mode
    x = torch.randn(4, 4, 5, 5)
    assert fold_batchnorm(copy.deepcopy(net), x) == []
    forced = copy.deepcopy(net)
    assert len(fold_batchnorm(forced, x, force=True)) == 4
    assert forced.training  # the flag is kept
    assert torch.allclose(forced.eval()(x), copy.deepcopy(net).eval()(x), atol=1e-5)


def test_fold_bad_input() -> None:
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        fold_batchnorm("net", torch.zeros(1))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="tensor of model inputs"):
        fold_batchnorm(Block(), [1, 2])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="calibration= or input_shape="):
        compress(Block(), 2, fold_batchnorm=True, progress=False)
    with pytest.raises(TypeError, match="fold_batchnorm must be"):
        compress(Block(), 2, fold_batchnorm="yes", progress=False)  # type: ignore[arg-type]


def _resnet() -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def test_compress_folds_by_default_with_calibration() -> None:
    net = _randomize_bn(_resnet()).eval()
    x = torch.randn(32, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    given = copy.deepcopy(net.state_dict())
    small, rep = compress(net, 4, calibration=x, min_kernel_size=256, progress=False, n_jobs=1)
    assert [p[1] for p in rep.totals["folded_batchnorm"]] == ["1", "4", "7"]
    assert all(isinstance(small[i], nn.Identity) for i in (1, 4, 7))
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in given.items())  # caller's model untouched
    assert rep.totals["params_before"] == sum(p.numel() for p in net.parameters())
    assert rep.totals["ratio"] >= 4
    off, rep_off = compress(net, 4, calibration=x, min_kernel_size=256, progress=False, n_jobs=1,
                            fold_batchnorm=False)
    assert rep_off.totals["folded_batchnorm"] == [] and isinstance(off[1], nn.BatchNorm2d)
    # without calibration nothing changes unless asked
    _, rep_w = compress(net, 4, min_kernel_size=256, progress=False, n_jobs=1)
    assert rep_w.totals["folded_batchnorm"] == []
    _, rep_f = compress(net, 4, min_kernel_size=256, progress=False, n_jobs=1, fold_batchnorm=True,
                        input_shape=(1, 3, 8, 8))
    assert len(rep_f.totals["folded_batchnorm"]) == 3
    # the folded, output-fitted model tracks the dense one at least as well as the unfolded one on held-out data
    xt = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    ref = net(xt)
    err = float((small(xt) - ref).norm() / ref.norm())
    err_off = float((off(xt) - ref).norm() / ref.norm())
    assert err < 1.0 and err_off < 1.0


def test_folded_compressed_model_round_trips_through_load_compressed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from sekron.torch import load_compressed

    net = _randomize_bn(_resnet()).eval()
    x = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    small, rep = compress(net, 4, calibration=x, min_kernel_size=256, progress=False, n_jobs=1)
    assert rep.totals["folded_batchnorm"]
    torch.save(small.state_dict(), tmp_path / "s.pt")
    fresh = load_compressed(_resnet(), torch.load(tmp_path / "s.pt", weights_only=True)).eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), small(x), rtol=0, atol=0)
    assert isinstance(fresh[1], nn.Identity) and fresh[0].bias is not None
    # a skeleton whose BatchNorm entries are present is untouched
    plain = load_compressed(_resnet(), _resnet().state_dict())
    assert isinstance(plain[1], nn.BatchNorm2d) and plain[0].bias is None
