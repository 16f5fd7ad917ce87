"""Convolution with a SeKron kernel: equality with the dense torch convolution, every order."""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import json
import math
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sekron.conv import IMPLEMENTATIONS, conv, conv_cost

import sekron
from sekron.sekron_tensor import SeKronTensor, random_sekron
from sekron.structure import Structure

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel")
F = torch.nn.functional

TOL = {"float32": 2e-4, "float64": 1e-10}
MAX_ERR: dict[str, float] = {}


@pytest.fixture(scope="module", autouse=True)
def _report_errors() -> Iterator[None]:
    yield
    print(f"\nlargest relative error of conv vs torch dense, per dtype: {MAX_ERR}")
    path = os.environ.get("SEKRON_CONV_ERRORS")
    if path:
        with open(path, "w") as fh:
            json.dump(MAX_ERR, fh)


def _pads(padding: Any, kernel: tuple[int, ...], dilation: tuple[int, ...]) -> list[tuple[int, int]]:
    if padding == "valid":
        return [(0, 0)] * len(kernel)
    if padding == "same":
        totals = [d * (k - 1) for d, k in zip(dilation, kernel)]
        return [(t // 2, t - t // 2) for t in totals]
    per = padding if isinstance(padding, tuple) else (padding,) * len(kernel)
    return [(p, p) for p in per]


def reference(x: Any, W: Any, stride: Any, padding: Any, dilation: Any, mode: str) -> Any:
    """torch.nn.Conv{D}d semantics: F.pad for non-zero modes, then F.conv{D}d."""
    D = x.ndim - 2
    fn = (F.conv1d, F.conv2d, F.conv3d)[D - 1]
    if mode == "zeros":
        return fn(x, W, None, stride, padding, dilation)
    dil = dilation if isinstance(dilation, tuple) else (dilation,) * D
    pads = _pads(padding, tuple(W.shape[2:]), dil)
    flat = [p for lo_hi in reversed(pads) for p in lo_hi]
    x = F.pad(x, flat, mode={"reflect": "reflect", "replicate": "replicate", "circular": "circular"}[mode])
    return fn(x, W, None, stride, 0, dilation)


def record(y: Any, ref: Any, dtype: str) -> None:
    y = y.detach() if hasattr(y, "detach") else torch.as_tensor(np.asarray(y))
    assert tuple(y.shape) == tuple(ref.shape)
    err = float((y.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-30))
    MAX_ERR[dtype] = max(MAX_ERR.get(dtype, 0.0), err)
    assert err < TOL[dtype], err


# --- hypothesis: structures, patterns, ranks and conv arguments --------------------------
@st.composite
def conv_cases(draw: Any, max_factors: int = 3) -> dict[str, Any]:
    D = draw(st.integers(1, 3))
    S = draw(st.integers(1, max_factors))
    hmax = 3 if D < 3 else 2
    shapes = []
    for _ in range(S):
        h = [draw(st.integers(1, hmax)) for _ in range(D)]
        shapes.append((draw(st.integers(1, 3)), draw(st.integers(1, 3)), *h))
    kernel = tuple(math.prod(s[2 + n] for s in shapes) for n in range(D))
    if any(k > 9 for k in kernel):  # keep the kernels small
        shapes = [(s[0], s[1], *tuple(1 if kernel[n] > 9 and i else s[2 + n] for n in range(D)))
                  for i, s in enumerate(shapes)]
        kernel = tuple(math.prod(s[2 + n] for s in shapes) for n in range(D))
    kind = draw(st.sampled_from(["nested", "chain", "ring", "cp", "tucker", "custom"]))
    if kind == "custom" and S >= 2:
        bonds = []
        for c in "pq"[: draw(st.integers(0, 2))]:
            users = draw(st.lists(st.integers(0, S - 1), min_size=2, max_size=S, unique=True))
            bonds.append((c, set(users)))
        structure = Structure(shapes, labels=["".join(c for c, u in bonds if k in u) for k in range(S)])
    else:
        structure = Structure(shapes, "nested" if kind == "custom" else kind)
    rank = {c: draw(st.integers(1, 3)) for c in structure.bond_labels}
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(D))
    stride = tuple(draw(st.integers(1, 2)) for _ in range(D))
    padding: Any = draw(st.sampled_from(["int", "tuple", "same", "valid"]))
    if padding == "same" and any(s > 1 for s in stride):
        padding = "valid"
    padding = {"int": draw(st.integers(0, 2)), "tuple": tuple(draw(st.integers(0, 2)) for _ in range(D))}.get(
        padding, padding)
    span = [d * (k - 1) + 1 for d, k in zip(dilation, kernel)]
    spatial = tuple(max(s, 3) + draw(st.integers(0, 3)) for s in span)
    if D == 3:
        spatial = tuple(min(L, 10) if s <= 8 else L for L, s in zip(spatial, span))
    return {
        "structure": structure, "rank": rank, "batch": draw(st.integers(1, 2)), "spatial": spatial,
        "stride": stride if draw(st.booleans()) else stride[0] if len(set(stride)) == 1 else stride,
        "dilation": dilation, "padding": padding,
        "mode": draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"])),
    }


def _make(case: dict[str, Any], dtype: str, seed: int = 0) -> tuple[Any, SeKronTensor]:
    tdtype = getattr(torch, dtype)
    sk = random_sekron(case["structure"], case["rank"], seed, dtype=tdtype)
    C = case["structure"].shape[1]
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(case["batch"], C, *case["spatial"], generator=gen, dtype=tdtype)
    return x, sk


def _args(case: dict[str, Any]) -> dict[str, Any]:
    return {"stride": case["stride"], "padding": case["padding"], "dilation": case["dilation"],
            "padding_mode": case["mode"]}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@given(case=conv_cases())
def test_equals_dense_torch_every_order(case: dict[str, Any], dtype: str) -> None:
    x, sk = _make(case, dtype)
    ref = reference(x.double(), sk.to_tensor().double(), case["stride"], case["padding"], case["dilation"],
                    case["mode"])
    S = sk.structure.n_factors
    for order in itertools.permutations(range(S)):
        record(conv(x, sk, **_args(case), implementation="factorized", order=order), ref, dtype)
    for impl in IMPLEMENTATIONS:
        record(conv(x, sk, **_args(case), implementation=impl), ref, dtype)


@given(case=conv_cases(max_factors=2))
def test_numpy_reference_matches_torch(case: dict[str, Any]) -> None:
    x, sk = _make(case, "float64")
    sk_np = SeKronTensor([f.numpy() for f in sk.factors], sk.structure)
    ref = reference(x, sk.to_tensor(), case["stride"], case["padding"], case["dilation"], case["mode"])
    for impl in ("factorized", "dense"):
        y = conv(x.numpy(), sk_np, **_args(case), implementation=impl)
        assert isinstance(y, np.ndarray)
        record(y, ref, "float64")


# --- worked examples ----------------------------------------------------------------------
WORKED = [
    # (factor shapes, pattern, rank, input spatial, conv kwargs)
    ([(2, 4, 3, 1), (4, 2, 1, 3)], "cp", 2, (7, 7), {"padding": 1}),  # 3x3 split as (3,1)(1,3)
    ([(2, 2, 2, 1), (2, 3, 2, 1)], "nested", 2, (9, 5), {"padding": "same"}),  # axis 4 = 2 x 2, even kernel
    ([(4, 3, 1, 1), (2, 2, 1, 1)], "cp", 3, (5, 6), {"stride": 2}),  # 1x1 kernel
    ([(1, 8, 1, 1), (8, 1, 3, 3)], "cp", 3, (8, 8), {"padding": 1, "stride": 2}),  # low-rank 1x1 then 3x3
    ([(2, 2, 2), (3, 2, 2), (1, 2, 1)], "ring", [2, 2, 2], (12,), {"padding": "same", "dilation": 2}),
    ([(2, 1, 1, 2, 1), (1, 3, 2, 1, 3)], "chain", 2, (5, 4, 6), {"padding": (1, 0, 1), "stride": (1, 2, 2)}),
    ([(2, 2, 3, 1), (2, 2, 1, 3), (1, 1, 1, 1)], "tucker", [2, 3], (6, 6), {"padding": 1}),
]


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("shapes, pattern, rank, spatial, kwargs", WORKED)
def test_worked_examples(shapes: Any, pattern: str, rank: Any, spatial: Any, kwargs: Any, mode: str) -> None:
    st_ = Structure(shapes, pattern)
    sk = random_sekron(st_, rank, 1, dtype=torch.float64)
    x = torch.randn(2, st_.shape[1], *spatial, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    bias = torch.randn(st_.shape[0], dtype=torch.float64)
    ref = reference(x, sk.to_tensor(), kwargs.get("stride", 1), kwargs.get("padding", 0),
                    kwargs.get("dilation", 1), mode) + bias.reshape(1, -1, *([1] * len(spatial)))
    for order in [*itertools.permutations(range(st_.n_factors)), "paper", None]:
        y = conv(x, sk, bias=bias, padding_mode=mode, implementation="factorized", order=order, **kwargs)
        record(y, ref, "float64")
    record(conv(x, sk, bias=bias, padding_mode=mode, implementation="dense", **kwargs), ref, "float64")


def test_stride_goes_to_the_last_stage_with_a_kernel() -> None:
    from sekron.convolution import _plan as cp

    spec = cp.KernelSpec(((2, 2, 3, 1), (2, 2, 1, 3), (2, 2, 1, 1)), ("a", "ab", "b"), (("a", 2), ("b", 2)))
    geom = cp.Geometry(1, (9, 9), (2, 3), (1, 1), ((1, 1), (1, 1)), "zeros")
    plan = cp.factorized_plan(spec, geom, (0, 1, 2))
    assert [s.stride[-2:] for s in plan.stages] == [(2, 1), (1, 3), (1, 1)]
    plan = cp.factorized_plan(spec, geom, (2, 1, 0))
    assert [s.stride[-2:] for s in plan.stages] == [(1, 1), (1, 3), (2, 1)]
    assert cp.factorized_plan(spec, geom, (2, 1, 0)) is plan  # cached


# --- gradients and other backends ------------------------------------------------------------
@pytest.mark.parametrize("implementation, order", [("factorized", (0, 1, 2)), ("factorized", (2, 0, 1)),
                                                    ("dense", None)])
def test_gradcheck(implementation: str, order: Any) -> None:
    st_ = Structure([(2, 1, 2, 1), (1, 2, 1, 2), (2, 2, 1, 1)], "ring")
    sk = random_sekron(st_, 2, 3, dtype=torch.float64)
    x = torch.randn(1, 4, 4, 5, dtype=torch.float64, requires_grad=True)
    factors = [f.clone().requires_grad_(True) for f in sk.factors]

    def fn(x: Any, *fs: Any) -> Any:
        return conv(x, SeKronTensor(fs, st_), stride=(2, 1), padding=1, padding_mode="reflect",
                    implementation=implementation, order=order)

    assert torch.autograd.gradcheck(fn, (x, *factors))


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_jax_matches_torch_values_and_gradients() -> None:
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    st_ = Structure([(2, 2, 3, 1), (2, 3, 1, 2)], "cp")
    sk = random_sekron(st_, 3, 4, dtype=torch.float64)
    x = torch.randn(2, 6, 7, 6, dtype=torch.float64)
    kw = {"stride": (1, 2), "padding": (1, 2), "padding_mode": "circular", "dilation": (2, 1)}
    sk_j = SeKronTensor([jnp.asarray(f.numpy()) for f in sk.factors], st_)
    for impl in ("factorized", "dense"):
        y_t = conv(x, sk, implementation=impl, **kw)
        y_j = conv(jnp.asarray(x.numpy()), sk_j, implementation=impl, **kw)
        np.testing.assert_allclose(np.asarray(y_j), y_t.numpy(), rtol=1e-10, atol=1e-10)

    factors = [f.clone().requires_grad_(True) for f in sk.factors]
    conv(x, SeKronTensor(factors, st_), implementation="factorized", **kw).square().sum().backward()

    def loss(fs: Any) -> Any:
        return jnp.sum(conv(jnp.asarray(x.numpy()), SeKronTensor(fs, st_), implementation="factorized", **kw) ** 2)

    grads = jax.grad(loss)([jnp.asarray(f.numpy()) for f in sk.factors])
    for g_j, f in zip(grads, factors):
        np.testing.assert_allclose(np.asarray(g_j), f.grad.numpy(), rtol=1e-9, atol=1e-9)


# --- the cost model counts what runs ------------------------------------------------------
COST_CASES = [
    ([(1, 16, 1, 1), (16, 1, 3, 3)], "cp", 4, (2, 16, 10, 10), {"padding": 1, "stride": 2}),
    ([(2, 2, 3, 1), (2, 2, 1, 3), (2, 2, 1, 1)], "nested", [2, 3], (2, 8, 9, 9), {"padding": "same"}),
    ([(2, 4, 2), (3, 2, 3)], "ring", [2, 2], (3, 8, 15), {"dilation": 2, "padding_mode": "reflect",
                                                          "padding": 3}),
]


@pytest.mark.parametrize("shapes, pattern, rank, xshape, kwargs", COST_CASES)
def test_conv_cost_macs_equal_flop_counter(shapes: Any, pattern: str, rank: Any, xshape: Any, kwargs: Any) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    sk = random_sekron(Structure(shapes, pattern), rank, 0, dtype=torch.float32)
    x = torch.randn(*xshape)
    cost = conv_cost(sk, xshape, **kwargs)
    runs = [("factorized", "paper", cost.paper), ("factorized", None, cost.best), ("dense", None, cost.dense),
            ("auto", None, cost.best if cost.auto == "factorized" else cost.dense)]
    for impl, order, plan in runs:
        importlib.import_module("sekron.convolution._conv")._KERNELS.clear()  # the counted plan forms the kernel
        with FlopCounterMode(display=False) as counter:
            conv(x, sk, implementation=impl, order=order, **kwargs)
        assert counter.get_total_flops() // 2 == plan.macs, (impl, order)
    assert cost.paper.order == tuple(range(len(shapes) - 1, -1, -1))
    assert cost.best.params == sk.n_params and cost.dense.params == math.prod(sk.shape)
    assert len(cost.best.stage_macs) == len(shapes) and sum(cost.best.stage_macs) == cost.best.macs


def test_planner_prefers_the_cheap_order_and_dense_when_factors_cost_more() -> None:
    low_rank = random_sekron(Structure([(1, 64, 1, 1), (64, 1, 3, 3)], "cp"), 6)
    cost = conv_cost(low_rank, (8, 64, 28, 28), padding=1)
    assert cost.best.order == (0, 1) and cost.auto == "factorized"
    assert cost.best.macs * 5 < cost.dense.macs < cost.paper.macs
    full_rank = random_sekron(Structure([(8, 8, 3, 3), (8, 8, 1, 1)], "cp"), 64)
    assert conv_cost(full_rank, (8, 64, 28, 28), padding=1).auto == "dense"


# --- bad input ------------------------------------------------------------------------------
def _sk(shape: tuple[Any, ...] = ((2, 3, 3, 1), (2, 1, 1, 3))) -> SeKronTensor:
    return random_sekron(Structure(shape, "cp"), 2, dtype=torch.float64)


@pytest.mark.parametrize("call, error, match", [
    (lambda x, sk: conv(x[:, :2], sk), ValueError, "channels"),
    (lambda x, sk: conv(x[:, :, 0], sk), ValueError, "order D \\+ 2"),
    (lambda x, sk: conv(x, sk, stride=0), ValueError, "stride must be an integer >= 1"),
    (lambda x, sk: conv(x, sk, stride=(1, 0)), ValueError, "stride\\[1\\]"),
    (lambda x, sk: conv(x, sk, stride=(1, 1, 1)), ValueError, "tuple of 2 ints"),
    (lambda x, sk: conv(x, sk, dilation=1.5), TypeError, "dilation"),
    (lambda x, sk: conv(x, sk, padding=-1), ValueError, "padding must be an integer >= 0"),
    (lambda x, sk: conv(x, sk, padding="full"), ValueError, "padding must be one of"),
    (lambda x, sk: conv(x, sk, padding="same", stride=2), ValueError, "padding='same' needs stride 1"),
    (lambda x, sk: conv(x, sk, padding_mode="mirror"), ValueError, "padding_mode must be one of"),
    (lambda x, sk: conv(x, sk, padding=9, padding_mode="reflect"), ValueError, "reflect"),
    (lambda x, sk: conv(x, sk, implementation="fft"), ValueError, "implementation must be one of"),
    (lambda x, sk: conv(x, sk, order=(0, 0)), ValueError, "permutation"),
    (lambda x, sk: conv(x, sk, order="best"), ValueError, "permutation"),
    (lambda x, sk: conv(x, sk, order=(1, 0), implementation="dense"), ValueError, "has no stages"),
    (lambda x, sk: conv(x[..., :2, :2], sk), ValueError, "smaller than the dilated kernel"),
    (lambda x, sk: conv(x, sk.to_tensor()), TypeError, "SeKronTensor"),
    (lambda x, sk: conv(x.float(), sk), TypeError, "dtype"),
    (lambda x, sk: conv(x, sk, bias=torch.zeros(3, dtype=torch.float64)), ValueError, "bias must have shape"),
    (lambda x, sk: conv(x.numpy(), sk), TypeError, "several frameworks"),
    (lambda x, sk: conv(x[0, 0, 0], sk), ValueError, "\\(B, C, \\*spatial\\)"),
    (lambda x, sk: conv_cost(sk, (1, 2, 5, 5)), ValueError, "channels"),
])
def test_bad_input(call: Any, error: type, match: str) -> None:
    x = torch.zeros(1, 3, 5, 5, dtype=torch.float64)
    with pytest.raises(error, match=match):
        call(x, _sk())


def test_benchmark_quick_smoke(tmp_path: Any) -> None:
    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "bench_conv.py")
    spec = importlib.util.spec_from_file_location("bench_conv", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.main(["--quick", "--out", str(tmp_path)])
    assert rows and all(r["dense_ms"] > 0 for r in rows)
    assert (tmp_path / "bench_conv.md").exists() and (tmp_path / "bench_conv.png").exists()


def test_public_api_is_reachable() -> None:
    assert callable(sekron.random_sekron) and set(IMPLEMENTATIONS) == {"factorized", "dense", "auto"}


def test_many_factors_use_the_greedy_order() -> None:
    from sekron.convolution import _plan as cp

    shapes = [(2, 1, 1, 1), (1, 2, 1, 1), (1, 1, 2, 1), (1, 1, 1, 2), (1, 2, 1, 1), (2, 1, 1, 1), (1, 1, 1, 1)]
    assert len(shapes) > cp.EXHAUSTIVE_MAX_FACTORS
    st_ = Structure(shapes, "chain")
    sk = random_sekron(st_, 2, 5, dtype=torch.float64)
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    ref = reference(x, sk.to_tensor(), 1, 1, 1, "zeros")
    record(conv(x, sk, padding=1, implementation="factorized"), ref, "float64")
    assert sorted(conv_cost(sk, x.shape, padding=1).best.order or ()) == list(range(7))


def test_dense_kernel_cache_in_inference_only() -> None:
    """Inference reuses the formed kernel until a factor changes in place; autograd never does."""
    conv_module = importlib.import_module("sekron.convolution._conv")
    structure = sekron.Structure([(2, 3, 3, 1), (2, 2, 1, 3)])
    sk = sekron.random_sekron(structure, 2, random_state=0, dtype=torch.float64)
    x = torch.randn(1, 6, 5, 5, dtype=torch.float64)
    conv_module._KERNELS.clear()
    with torch.no_grad():
        y1 = conv(x, sk, padding=1, implementation="dense")
        assert len(conv_module._KERNELS) == 1
        y2 = conv(x, sk, padding=1, implementation="dense")
        torch.testing.assert_close(y1, y2)
        sk.factors[0].mul_(2.0)  # an in-place update (as an optimizer step) bumps the version
        y3 = conv(x, sk, padding=1, implementation="dense")
    ref = torch.nn.functional.conv2d(x, sk.to_tensor(), padding=1)
    torch.testing.assert_close(y3, ref)
    factors = [f.clone().requires_grad_(True) for f in sk.factors]
    conv_module._KERNELS.clear()
    y = conv(x, sekron.SeKronTensor(factors, structure), padding=1, implementation="dense")
    y.sum().backward()
    assert not conv_module._KERNELS and factors[0].grad is not None


def test_stage_weights_cached_in_inference_only() -> None:
    """Factorized inference reuses the permuted stage weights until a factor changes; autograd never caches."""
    conv_module = importlib.import_module("sekron.convolution._conv")
    structure = sekron.Structure([(1, 6, 1, 1), (4, 1, 3, 3)])  # stage weights need a real transpose
    sk = sekron.random_sekron(structure, 3, random_state=0, dtype=torch.float64)
    x = torch.randn(2, 6, 7, 7, dtype=torch.float64)
    sekron.clear_conv_cache()
    with torch.no_grad():
        y1 = conv(x, sk, padding=1, implementation="factorized")
        n = len(conv_module._KERNELS)
        assert n >= 1
        y2 = conv(x, sk, padding=1, implementation="factorized")
        assert len(conv_module._KERNELS) == n
        torch.testing.assert_close(y1, y2)
        sk.factors[1].mul_(-3.0)
        y3 = conv(x, sk, padding=1, implementation="factorized")
    torch.testing.assert_close(y3, torch.nn.functional.conv2d(x, sk.to_tensor(), padding=1))
    sekron.clear_conv_cache()
    assert not conv_module._KERNELS
    factors = [f.clone().requires_grad_(True) for f in sk.factors]
    conv(x, sekron.SeKronTensor(factors, structure), padding=1, implementation="factorized").sum().backward()
    assert not conv_module._KERNELS and factors[1].grad is not None


def test_inference_cache_is_bounded() -> None:
    conv_module = importlib.import_module("sekron.convolution._conv")
    sekron.clear_conv_cache()
    structure = sekron.Structure([(2, 2, 3, 1), (2, 2, 1, 3)])
    x = torch.randn(1, 4, 5, 5)
    kept = []
    with torch.no_grad():
        for seed in range(conv_module._KERNELS_MAX + 5):
            sk = sekron.random_sekron(structure, 2, random_state=seed, dtype=torch.float32)
            conv(x, sk, padding=1, implementation="dense")
            kept.append(sk)
    assert len(conv_module._KERNELS) == conv_module._KERNELS_MAX
    kept.clear()  # freed factors free their entries
    del sk
    assert not conv_module._KERNELS


def test_remembered_arguments_still_reject_look_alikes() -> None:
    """Checked arguments are remembered per call site; 1.0 and True are not mistaken for 1."""
    x, sk = torch.zeros(1, 3, 5, 5, dtype=torch.float64), _sk()
    conv(x, sk, stride=1, dilation=1, padding=1)
    conv(x, sk, stride=(1, 1), dilation=[1, 1], padding=[1, 1])  # lists are fine, and remembered
    conv(x, sk, stride=(1, 1), dilation=[1, 1], padding=[1, 1])
    for kwargs in ({"stride": True}, {"stride": 1.0}, {"dilation": (1.0, 1)}, {"padding": True}):
        with pytest.raises(TypeError):
            conv(x, sk, **{"padding": 1, **kwargs})
