"""Device preservation on an accelerator: every entry point keeps the caller's device.

These tests run on CUDA where torch sees a GPU and skip cleanly elsewhere (CI has none).
``SEKRON_TEST_DEVICE=cpu pytest tests/test_device.py`` runs the same checks on the CPU, so
the test logic itself is exercised on every machine by hand.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402, N812
from torch import nn  # noqa: E402

import sekron  # noqa: E402
from sekron.torch import SeKronConv2d, SeKronLinear, compress  # noqa: E402

DEVICE = os.environ.get("SEKRON_TEST_DEVICE", "cuda")
if DEVICE.startswith("cuda") and not torch.cuda.is_available():
    pytest.skip("no CUDA device (set SEKRON_TEST_DEVICE=cpu to run these checks on the CPU)",
                allow_module_level=True)

DTYPES = [torch.float32, torch.float64]


@pytest.fixture(autouse=True)
def _full_float32_precision():  # type: ignore[no-untyped-def]
    """Ampere and later GPUs run float32 convs and matmuls in TF32 by default (about 1e-3
    relative error, in sekron and in the dense reference alike); these tests compare in full float32."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
TOL = {torch.float32: 2e-4, torch.float64: 1e-10}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def _same_place(t: torch.Tensor, dtype: torch.dtype) -> None:
    assert t.device.type == torch.device(DEVICE).type, t.device
    assert t.dtype == dtype, t.dtype


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pattern", ["nested", "chain", "ring", "cp", "tucker"])
def test_decompose_keeps_device(pattern: str, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    W = torch.randn(8, 6, 4, generator=gen, dtype=dtype).to(DEVICE)
    shapes = [(2, 3, 2), (4, 2, 2)] if pattern != "tucker" else [(8, 1, 1), (1, 6, 1), (1, 1, 4)]
    st = sekron.Structure(shapes, pattern=pattern)
    sk, err = sekron.decompose(W, st, rank=None if pattern != "cp" else 24, return_error=True)
    for f in sk.factors:
        _same_place(f, dtype)
    W_hat = sk.to_tensor()
    _same_place(W_hat, dtype)
    assert _rel(W_hat, W) <= max(err, 0) + (1e-3 if pattern == "cp" else TOL[dtype])
    assert float(sk.norm()) == pytest.approx(float(torch.linalg.vector_norm(W_hat)), rel=1e-4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_tol_guarantee_on_device(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(1)
    W = torch.randn(16, 16, 3, 3, generator=gen, dtype=dtype).to(DEVICE)
    st = sekron.Structure([(4, 4, 3, 1), (4, 4, 1, 3)])
    sk, err = sekron.decompose(W, st, tol=0.3, return_error=True)
    assert _rel(sk.to_tensor(), W) <= 0.3 + 1e-5
    assert err == pytest.approx(_rel(sk.to_tensor(), W), rel=1e-3, abs=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_conversions_keep_device(dtype: torch.dtype) -> None:
    st = sekron.Structure([(2, 3, 2), (2, 2, 3)], pattern="nested")
    sk = sekron.random_sekron(st, 3, random_state=0, dtype=dtype, device=DEVICE)
    W = sk.to_tensor()
    tt = sekron.to_tt(sk)
    for core in tt.factors:
        _same_place(core, dtype)
    back = sekron.from_tt(tt)
    _same_place(back.factors[0], dtype)
    assert _rel(back.to_tensor(), W) <= TOL[dtype]
    tucker = sekron.to_tucker(sk)
    _same_place(tucker.core, dtype)
    assert _rel(sekron.from_tucker(tucker).to_tensor(), W) <= TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D", [1, 2, 3])
@pytest.mark.parametrize("implementation", ["factorized", "dense", "auto"])
def test_conv_equals_dense_on_device(D: int, implementation: str, dtype: torch.dtype) -> None:
    k = (3, 1, 3)[:D]
    shapes = [(4, 2, *k), (2, 3, *(3 if i == 1 else 1 for i in range(D)))]
    st = sekron.Structure(shapes, pattern="nested")
    sk = sekron.random_sekron(st, 2, random_state=0, dtype=dtype, device=DEVICE)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, *(9,) * D, generator=gen, dtype=dtype).to(DEVICE)
    bias = torch.randn(8, generator=gen, dtype=dtype).to(DEVICE)
    ref = (F.conv1d, F.conv2d, F.conv3d)[D - 1](x, sk.to_tensor(), bias, 2, 1, 1)
    for order in (None, "paper"):
        if implementation != "factorized" and order is not None:
            continue
        y = sekron.conv(x, sk, stride=2, padding=1, bias=bias, implementation=implementation, order=order)
        _same_place(y, dtype)
        assert _rel(y, ref) <= TOL[dtype]


def test_conv_padding_modes_on_device() -> None:
    st = sekron.Structure([(2, 2, 3, 1), (3, 2, 1, 3)], pattern="chain")
    sk = sekron.random_sekron(st, 2, random_state=3, dtype=torch.float64, device=DEVICE)
    x = torch.randn(2, 4, 7, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    for mode in ("zeros", "reflect", "replicate", "circular"):
        ref_in = x if mode == "zeros" else F.pad(x, (1, 1, 1, 1), mode=mode)
        ref = F.conv2d(ref_in, sk.to_tensor(), None, 1, 1 if mode == "zeros" else 0)
        y = sekron.conv(x, sk, padding=1, padding_mode=mode, implementation="factorized")
        assert _rel(y, ref) <= 1e-10, mode


def test_conv_gradcheck_on_device() -> None:
    st = sekron.Structure([(2, 2, 3, 1), (2, 1, 1, 3)], pattern="nested")
    sk0 = sekron.random_sekron(st, 2, random_state=4, dtype=torch.float64, device=DEVICE)
    factors = [f.clone().requires_grad_(True) for f in sk0.factors]
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64, device=DEVICE, requires_grad=True)

    def f(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return sekron.conv(x, sekron.SeKronTensor([a, b], st), padding=1, implementation="factorized")

    assert torch.autograd.gradcheck(f, (x, *factors))
    y = sekron.conv(x, sekron.SeKronTensor(factors, st), padding=1, implementation="dense")
    y.square().sum().backward()
    for t in (x, *factors):
        assert t.grad is not None and t.grad.device == x.device


def test_inference_kernel_cache_sees_device_updates() -> None:
    st = sekron.Structure([(4, 2, 3, 3), (2, 3, 1, 1)], pattern="nested")
    sk = sekron.random_sekron(st, 2, random_state=5, dtype=torch.float32, device=DEVICE)
    x = torch.randn(2, 6, 8, 8, device=DEVICE)
    with torch.no_grad():
        y1 = sekron.conv(x, sk, padding=1, implementation="dense")
        sk.factors[0].mul_(2.0)  # in place: the cached kernel must be rebuilt
        y2 = sekron.conv(x, sk, padding=1, implementation="dense")
    assert _rel(y2, 2 * y1) <= 1e-5


def test_layer_from_conv_keeps_device_and_trains() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=True).to(DEVICE).double()
    layer = SeKronConv2d.from_conv(conv, [(4, 4, 3, 1), (8, 4, 1, 3)], rank=None)
    for p in layer.parameters():
        _same_place(p, torch.float64)
    x = torch.randn(3, 16, 12, 12, dtype=torch.float64, device=DEVICE)
    assert _rel(layer(x), conv(x)) <= 1e-9
    dense = layer.to_conv()
    assert next(dense.parameters()).device == x.device
    assert _rel(dense(x), conv(x)) <= 1e-9
    opt = torch.optim.SGD(layer.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in layer.parameters()]
    layer(x).square().mean().backward()
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, layer.parameters()))
    moved = layer.to("cpu")
    assert all(p.device.type == "cpu" for p in moved.parameters())


def test_linear_layer_keeps_device() -> None:
    lin = nn.Linear(24, 16).to(DEVICE)
    layer = SeKronLinear.from_linear(lin, [(4, 6), (4, 4)], rank=None)
    x = torch.randn(5, 24, device=DEVICE)
    y = layer(x)
    _same_place(y, torch.float32)
    assert _rel(y, lin(x)) <= 1e-4


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1),
                                  nn.ReLU())
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(F.relu(self.stem(x))).mean((2, 3)))


def test_compress_model_on_device() -> None:
    torch.manual_seed(0)
    model = _Net().to(DEVICE)
    x = torch.randn(4, 3, 16, 16, device=DEVICE)
    small, report = compress(model, ratio=3, progress=False, input_shape=(1, 3, 16, 16))
    assert report.totals["ratio"] >= 2.9
    assert all(p.device == x.device for p in small.parameters())
    y = small(x)
    assert y.device == x.device and torch.isfinite(y).all()
    assert next(model.parameters()).device == x.device  # the original is untouched


def test_jax_on_accelerator() -> None:
    jax = pytest.importorskip("jax")
    jnp = pytest.importorskip("jax.numpy")
    device = jax.devices()[0]
    if DEVICE.startswith("cuda") and device.platform != "gpu":
        pytest.skip("jax sees no GPU here")
    W = jax.device_put(jnp.asarray(np.random.default_rng(0).standard_normal((8, 6, 3, 3)), jnp.float32), device)
    st = sekron.Structure([(4, 2, 3, 1), (2, 3, 1, 3)])
    sk = sekron.decompose(W, st, rank=None)
    assert all(next(iter(f.devices())) == device for f in sk.factors)
    x = jax.device_put(jnp.ones((2, 6, 7, 7), jnp.float32), device)
    with jax.default_matmul_precision("highest"):  # no TF32 on the GPU
        y = sekron.conv(x, sk, padding=1, implementation="factorized")
        y_dense = sekron.conv(x, sk, padding=1, implementation="dense")
    assert next(iter(y.devices())) == device
    assert float(jnp.linalg.norm(y - y_dense) / jnp.linalg.norm(y_dense)) <= 1e-4
