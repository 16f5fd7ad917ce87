"""Hostile inputs to sekron.torch and ``sekron compress`` (issue 11); each failed before its fix."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from sekron.torch import SeKronConv1d, SeKronConv2d, SeKronConv3d, SeKronLinear, compress  # noqa: E402
from sekron.torch.cli import compress_main  # noqa: E402

ARCH = """
import torch
def build():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(), torch.nn.Conv2d(16, 32, 3))
"""


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 32, 3))


def test_compress_with_a_nan_weight_names_the_layer() -> None:
    net = _net()
    with torch.no_grad():
        net[2].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"layer '2' has NaN or Inf"):
        compress(net, 2, min_kernel_size=100, progress=False)


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(batch_size=2.5), TypeError, "batch_size must be an integer >= 1, got 2.5"),
    (dict(batch_size=0), ValueError, "batch_size must be an integer >= 1, got 0"),
    (dict(seed="1"), TypeError, "seed must be an integer"),
    (dict(fit_steps=-1), ValueError, "fit_steps must be an integer >= 0"),
    (dict(sensitivity_steps=1.5), TypeError, "sensitivity_steps must be an integer"),
    (dict(min_kernel_size=True), TypeError, "min_kernel_size must be an integer"),
])
def test_compress_integer_options_are_not_truncated(kwargs: dict, err: type, match: str) -> None:
    with pytest.raises(err, match=match):
        compress(_net(), 2, progress=False, **kwargs)


def test_compress_without_tqdm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm now raises ImportError
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    _, report = compress(_net(), 2, min_kernel_size=100, progress=True, n_jobs=1)
    assert report.totals["layers_compressed"] == 1  # no tqdm: no bar, and no ModuleNotFoundError


@pytest.mark.parametrize("cls, dense, spatial", [
    (SeKronConv1d, nn.Conv1d(8, 8, 3, padding=1), (7,)),
    (SeKronConv2d, nn.Conv2d(8, 8, 3, padding=1), (6, 5)),
    (SeKronConv3d, nn.Conv3d(8, 8, 3, padding=1), (4, 3, 5)),
])
def test_unbatched_input_like_nn_conv(cls: type, dense: nn.Module, spatial: tuple[int, ...]) -> None:
    D = len(spatial)
    fa = (4, 2, 3) + (1,) * (D - 1)
    fb = (2, 4, 1) + (3,) * (D - 1)
    layer = cls.from_conv(dense, [fa, fb])
    x = torch.randn(8, *spatial)
    y = layer(x)
    assert y.shape == dense(x).shape == (8, *spatial)
    torch.testing.assert_close(y, dense(x), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(layer(x[None])[0], y)


def test_float64_bias_does_not_promote_a_float32_layer() -> None:
    dense = nn.Conv2d(4, 4, 3)
    sk = SeKronConv2d.from_conv(dense, [(2, 2, 3, 1), (2, 2, 1, 3)]).sekron_weight()
    with pytest.raises(TypeError, match=r"bias has dtype torch.float64.*float32"):
        SeKronConv2d(sk, bias=torch.zeros(4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"bias must have shape \(4,\)"):
        SeKronConv2d(sk, bias=torch.zeros(5))
    lin = SeKronLinear.from_linear(nn.Linear(6, 4), [(2, 2), (2, 3)]).sekron_weight()
    with pytest.raises(TypeError, match="bias has dtype"):
        SeKronLinear(lin, bias=torch.zeros(4, dtype=torch.float64))


# --- sekron compress -------------------------------------------------------------------------


@pytest.fixture
def state(tmp_path: Path) -> tuple[str, Path]:
    (tmp_path / "arch.py").write_text(ARCH)
    ns: dict = {}
    exec(ARCH, ns)
    src = tmp_path / "model.pt"
    torch.save(ns["build"]().state_dict(), src)
    return f"{tmp_path / 'arch.py'}:build", src


def test_outputs_are_checked_before_anything_is_written(state: tuple[str, Path], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    arch, src = state
    out = tmp_path / "out.pt"
    assert compress_main([str(src), "--ratio", "2", "-o", str(out), "--arch", arch, "--quiet",
                          "--min-kernel-size", "100", "--report", str(tmp_path / "nope" / "r.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not out.exists()  # failed before writing the model
    d = tmp_path / "dir"
    d.mkdir()
    assert compress_main([str(src), "--ratio", "2", "-o", str(d), "--arch", arch, "--quiet"]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_garbage_model_file(state: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arch, _ = state
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(np.random.default_rng(0).bytes(2000))
    assert compress_main([str(bad), "--ratio", "2", "-o", str(tmp_path / "o.pt"), "--arch", arch]) == 2
    err = capsys.readouterr().err
    assert "never unpickles" in err and "weights_only=False" not in err


def test_arch_module_that_does_not_exist(state: tuple[str, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    _, src = state
    assert compress_main([str(src), "--ratio", "2", "-o", str(tmp_path / "o.pt"), "--arch", "nomod:build"]) == 2
    assert "cannot import the module 'nomod'" in capsys.readouterr().err
    assert compress_main([str(src), "--ratio", "2", "-o", str(tmp_path / "o.pt"), "--arch", "nofile.py:b"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_state_dict_of_another_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "arch.py").write_text(ARCH)
    src = tmp_path / "other.pt"
    torch.save(nn.Sequential(nn.Linear(3, 3)).state_dict(), src)
    assert compress_main([str(src), "--ratio", "2", "-o", str(tmp_path / "o.pt"),
                          "--arch", f"{tmp_path / 'arch.py'}:build"]) == 2
    assert "does not fit the model" in capsys.readouterr().err
