"""The command line: decompose, info, reconstruct, errors, and ``python -m sekron``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import sekron
from sekron._demo import rank_for_budget
from sekron.cli import main


def test_decompose_info_reconstruct(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    W = np.kron(rng.standard_normal((4, 4, 3, 1)), rng.standard_normal((4, 4, 1, 3)))
    np.save(tmp_path / "w.npy", W)
    out = tmp_path / "w.npz"
    assert main(["decompose", str(tmp_path / "w.npy"), "--structure", "4x4x3x1,4x4x1x3", "--rank", "1",
                 "-o", str(out)]) == 0
    assert "relative error" in capsys.readouterr().out
    sk = sekron.load(out)
    assert sk.rank == {"a": 1}
    np.testing.assert_allclose(sk.to_tensor(), W, atol=1e-10)
    assert main(["info", str(out)]) == 0
    assert "pattern='nested'" in capsys.readouterr().out
    assert main(["reconstruct", str(out), "-o", str(tmp_path / "r.npy")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "r.npy"), W, atol=1e-10)


def test_pattern_tol_and_rank_list(tmp_path: Path) -> None:
    W = np.random.default_rng(1).standard_normal((8, 9, 4))
    np.save(tmp_path / "w.npy", W)
    assert main(["decompose", str(tmp_path / "w.npy"), "--structure", "2x3x2,2x3x1,2x1x2", "--pattern", "chain",
                 "--rank", "3,2", "-o", str(tmp_path / "c.npz")]) == 0
    assert sekron.load(tmp_path / "c.npz").rank == {"a": 3, "b": 2}
    assert main(["decompose", str(tmp_path / "w.npy"), "--structure", "8x9x4", "--tol", "0.5",
                 "-o", str(tmp_path / "t.npz")]) == 0


def test_errors_are_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "w.npy", np.ones((4, 4)))
    assert main(["decompose", str(tmp_path / "w.npy"), "--structure", "2x2,2x3", "-o", str(tmp_path / "o.npz")]) == 2
    assert "does not match the structure" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["decompose", str(tmp_path / "w.npy"), "--structure", "2xa", "-o", "x"])
    assert main(["info", str(tmp_path / "missing.npz")]) == 2


def test_python_m_entry_point() -> None:
    done = subprocess.run([sys.executable, "-m", "sekron", "--help"], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and "decompose" in done.stdout


def test_budget_helpers() -> None:
    st = sekron.Structure([(4, 4), (3, 3), (2, 2)], "chain")
    assert st.n_params(2) == 2 * 16 + 4 * 9 + 2 * 4
    r = rank_for_budget(st, 200)
    assert r is not None and st.n_params(r) <= 200 < st.n_params(r + 1)
    assert rank_for_budget(st, 5) is None


def test_demo_falls_back_without_real_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    import sekron._demo as demo
    import sekron.datasets as datasets

    def missing() -> None:
        raise ModuleNotFoundError("the package 'ddddocr' is not installed")

    monkeypatch.setattr(datasets, "load_ddddocr_convs", missing)
    monkeypatch.setattr(demo, "run_demo", lambda **kw: "pines table")
    out = demo.run(show_progress=False)
    assert "real conv weights unavailable" in out and "make demo" in out and out.endswith("pines table")


def test_real_weights_demo_one_layer() -> None:
    pytest.importorskip("onnx")
    import importlib.util

    if importlib.util.find_spec("ddddocr") is None:
        pytest.skip("ddddocr is not installed (make demo installs it)")
    from sekron._demo import real_weights_demo

    table = real_weights_demo(n_layers=1, ratio=8, show_progress=False)
    assert "| Conv_41 | 24x12x3x3 |" in table and "lowest error on" in table
