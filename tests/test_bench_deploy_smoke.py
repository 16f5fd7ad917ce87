"""Smoke test: the deployment benchmark runs end to end in its --quick mode (tiny layers, no ddddocr)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_deploy.py"


@pytest.mark.skipif(not SCRIPT.exists(), reason="benchmarks/ not shipped")
def test_bench_deploy_quick(tmp_path: Path) -> None:
    for module in ("torch", "onnx", "onnxruntime", "onnxscript"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed")
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
