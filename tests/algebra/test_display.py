"""Notebook ergonomics: repr, _repr_html_, == and hash, search's table, plot.spectrum."""

from __future__ import annotations

import numpy as np
import pytest
from algebra_helpers import make
from conftest import Backend

import sekron
from sekron import Structure


def test_repr_and_html_show_dtype_backend_device() -> None:
    torch = pytest.importorskip("torch")
    st = Structure([(2, 3), (3, 2)], "chain")
    sk = make(st, 2, 0, Backend("pytorch"), "float32")
    text = repr(sk)
    assert "dtype=float32" in text and "backend=pytorch" in text and "device=cpu" in text
    html = sk._repr_html_()
    assert "<table>" in html and "a=2" in html and "A2" in html and "float32" in html
    assert isinstance(sk.factors[0], torch.Tensor)
    assert "backend=numpy" in repr(sekron.random_sekron(st, 1))


def test_eq_raises_and_hash_is_identity() -> None:
    a = sekron.random_sekron(Structure([(2, 2), (2, 2)], "cp"), 2)
    b = a * 1.0
    with pytest.raises(TypeError, match="allclose"):
        a == b  # noqa: B015
    with pytest.raises(TypeError, match="allclose"):
        a != b  # noqa: B015
    assert sekron.allclose(a, b)
    assert hash(a) == hash(a) and len({a, b, a}) == 2
    assert {a: 1}[a] == 1


def test_search_returns_a_table() -> None:
    pd = pytest.importorskip("pandas")
    W = np.random.default_rng(0).standard_normal((8, 8))
    found = sekron.search(W, ratio=2, n_factors=[2], patterns=["nested", "cp"], baselines=[])
    assert isinstance(found, list) and len(found) > 0
    lines = str(found).splitlines()
    assert lines[0].split()[:3] == ["#", "pattern", "factor_shapes"] and len(lines) == len(found) + 1
    frame = found.to_pandas()
    assert isinstance(frame, pd.DataFrame) and len(frame) == len(found)
    assert frame["error"].tolist() == [c.error for c in found]


def test_spectrum() -> None:
    pytest.importorskip("matplotlib")
    from sekron.plot import spectrum, spectrum_data

    W = np.random.default_rng(0).standard_normal((8, 8))
    st = Structure([(2, 2), (4, 4)])
    data = spectrum_data(W, st, ranks=[1, 2, 3, 4])
    sv = np.linalg.svd(st.rearrange(W), compute_uv=False)
    want = [np.sqrt(np.sum(sv[r:] ** 2)) / np.linalg.norm(W) for r in data["rank"]]
    np.testing.assert_allclose(data["error"], want, atol=1e-10)
    sk = sekron.decompose(W, st)
    from_sk = spectrum_data(sk, st, ranks=[1, 2, 3, 4])
    np.testing.assert_allclose(from_sk["error"], want, atol=1e-6)
    fig = spectrum(W, st, ranks=[1, 2])
    assert fig.axes and fig.axes[0].get_ylabel().startswith("relative error")
