"""sekron compress from the shell: state dict + --arch in, weights_only-loadable state dict out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from sekron.torch import SeKronConv2d, load_compressed  # noqa: E402
from sekron.torch.cli import compress_main  # noqa: E402

ARCH = """
import torch
def build():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(), torch.nn.Conv2d(16, 32, 3),
                               torch.nn.ReLU(), torch.nn.Conv2d(32, 32, 3))
"""


def _build(tmp_path: Path) -> tuple[str, nn.Module]:
    (tmp_path / "arch.py").write_text(ARCH)
    ns: dict = {}
    exec(ARCH, ns)
    return f"{tmp_path / 'arch.py'}:build", ns["build"]()


def test_state_dict_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    arch, model = _build(tmp_path)
    src, out, rep = tmp_path / "model.pt", tmp_path / "out.pt", tmp_path / "report.json"
    torch.save(model.state_dict(), src)
    code = compress_main([str(src), "--ratio", "4", "-o", str(out), "--arch", arch, "--report", str(rep),
                          "--input-shape", "1,3,12,12", "--min-kernel-size", "100"])
    assert code == 0
    assert "total (model)" in capsys.readouterr().out
    fresh = load_compressed(_build(tmp_path)[1], torch.load(out, weights_only=True))
    assert any(isinstance(m, SeKronConv2d) for m in fresh.modules())
    report = json.loads(rep.read_text())
    assert report["totals"]["ratio"] >= 4 * 0.999 and len(report["rows"]) == 3
    assert sum(p.numel() for p in fresh.parameters()) == report["totals"]["params_after"]


def test_pickled_module_needs_permission(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _, model = _build(tmp_path)
    src, out = tmp_path / "whole.pt", tmp_path / "out.pt"
    torch.save(model, src)
    assert compress_main([str(src), "--ratio", "3", "-o", str(out), "--quiet"]) == 2
    assert "--allow-pickle" in capsys.readouterr().err
    assert compress_main([str(src), "--ratio", "3", "-o", str(out), "--quiet", "--allow-pickle",
                          "--min-kernel-size", "100"]) == 0
    assert out.exists()


def test_torchscript_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _, model = _build(tmp_path)
    src = tmp_path / "scripted.pt"
    torch.jit.script(model).save(str(src))
    assert compress_main([str(src), "--ratio", "3", "-o", str(tmp_path / "o.pt"), "--quiet"]) == 2
    assert "TorchScript" in capsys.readouterr().err
