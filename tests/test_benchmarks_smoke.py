"""Smoke test: the decomposition benchmark runs end to end in its --quick mode."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_decompose.py"


@pytest.mark.skipif(not SCRIPT.exists(), reason="benchmarks/ not shipped")
def test_bench_decompose_quick(tmp_path: Path) -> None:
    out = tmp_path / "bench.md"
    env = {**os.environ, "SEKRON_BENCH_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--output", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = out.read_text()
    assert "Command: `python benchmarks/bench_decompose.py --quick`" in text
    assert "| shape | rank | sekron (s) | tensorly (s) | speed-up |" in text
    assert text.count("\n| (") == 3  # one row per chain case
    assert "## Nested pattern on (64, 64, 3, 3)" in text and "## Targets" in text
    rows = [line for line in text.splitlines() if line.startswith("| (")]
    for row in rows:  # same error as tensorly's TT-SVD, to the printed digits
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert abs(float(cells[8]) - float(cells[9])) <= 0.01 * float(cells[9])
