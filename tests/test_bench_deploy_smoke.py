"""Smoke test: the deployment benchmark runs end to end in its --quick mode (tiny layers, no ddddocr)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_deploy.py"


def _need(*modules: str) -> None:
    for module in modules:
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed")


def _bench_deploy() -> Any:
    """The benchmark script imported as a module."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import bench_deploy
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return bench_deploy


@pytest.mark.skipif(not SCRIPT.exists(), reason="benchmarks/ not shipped")
def test_bench_deploy_quick(tmp_path: Path) -> None:
    _need("torch", "onnx", "onnxruntime", "onnxscript")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--threads", "1", "--skip", "ddddocr,resnet,esrgan",
                           "--out", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (tmp_path / "bench_deploy.md").read_text()
    assert "| model | plan | params | MAC ratio |" in text
    data = json.loads((tmp_path / "bench_deploy.json").read_text())
    assert len(data["layers"]) == 2
    for row in data["layers"]:  # onnxruntime runs the deployed file and agrees with the SeKron layer
        assert row["ort_b8_max_rel_err"] < 1e-4 and 0 < row["mac_ratio"] <= 1.0


@pytest.mark.skipif(not SCRIPT.exists(), reason="benchmarks/ not shipped")
@pytest.mark.parametrize("dynamo", [False, True])
def test_onnx_cost_reads_both_exporters(tmp_path: Path, dynamo: bool) -> None:
    """bench_deploy's parameter and MAC count of an ONNX file equals the torch model's, for either exporter's file
    (the dynamo exporter's graphs could not be read back with onnx2torch)."""
    _need("torch", "onnx", "onnxscript")
    import torch

    from sekron.torch.calibrate import counted_macs

    bench_deploy = _bench_deploy()
    nn = torch.nn
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3, groups=4, padding=2, dilation=2),
                        nn.Conv2d(8, 6, 1, stride=2), nn.Flatten(), nn.Linear(6 * 7 * 7, 5)).eval()
    x = torch.randn(2, 3, 16, 16)
    path = tmp_path / "net.onnx"
    torch.onnx.export(net, (x,), str(path), dynamo=dynamo)
    expected = (sum(p.numel() for p in net.parameters()), counted_macs(net, x))
    assert bench_deploy.onnx_cost(str(path), tuple(x.shape)) == expected
    with pytest.raises(ValueError, match="dimensions"):
        bench_deploy.onnx_cost(str(path), (3, 16, 16))


@pytest.mark.skipif(not SCRIPT.exists(), reason="benchmarks/ not shipped")
@pytest.mark.parametrize("dynamo", [False, True])
def test_free_spatial_runs_the_file_at_another_tile_size(tmp_path: Path, dynamo: bool) -> None:
    """bench_deploy --time-size: the copy of a fully convolutional file, exported at 16x16, runs at 24x24 in
    onnxruntime and equals the torch model there; the original file is left as it was."""
    _need("torch", "onnx", "onnxruntime", "onnxscript")
    import numpy as np
    import onnxruntime as ort
    import torch

    bench_deploy = _bench_deploy()
    nn = torch.nn
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.LeakyReLU(0.2), nn.Upsample(scale_factor=2.0),
                        nn.Conv2d(8, 4, 3, padding=1, groups=2)).eval()
    path = tmp_path / "net.onnx"
    torch.onnx.export(net, (torch.randn(1, 3, 16, 16),), str(path), dynamo=dynamo)
    before = path.read_bytes()
    free = bench_deploy.free_spatial(str(path), str(tmp_path / "free"))
    x = torch.randn(1, 3, 24, 24)
    sess = ort.InferenceSession(free, providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = net(x).numpy()
    assert got.shape == (1, 4, 48, 48)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert path.read_bytes() == before


@pytest.mark.skipif(not SCRIPT.exists(), reason="benchmarks/ not shipped")
def test_profile_files_counts_the_conv_nodes(tmp_path: Path) -> None:
    """bench_deploy --profile-files: one Conv node per conv of the model, node times within the run time, and the
    floor (time outside the convs plus each conv at the fastest one's time) at most the run time."""
    _need("torch", "onnx", "onnxruntime")
    import torch

    bench_deploy = _bench_deploy()
    nn = torch.nn
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 4, 3)).eval()
    path = tmp_path / "net.onnx"
    torch.onnx.export(net, (torch.randn(1, 3, 12, 12),), str(path), dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "batch"}})
    with pytest.raises(ValueError, match="fixed batch"):
        fixed = tmp_path / "fixed.onnx"
        torch.onnx.export(net, (torch.randn(1, 3, 12, 12),), str(fixed), dynamo=False)
        bench_deploy.profile_files([str(fixed)], rounds=2, batch=2)
    row = bench_deploy.profile_files([str(path)], rounds=20, batch=2, threads=1)[str(path)]
    assert row["conv_nodes"] == 3
    assert 0 < row["fastest_conv_us"] <= row["by_op_us"]["Conv"] <= row["run_us"]
    assert row["floor_us"] <= row["run_us"] + 1e-9
