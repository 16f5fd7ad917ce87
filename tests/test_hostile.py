"""Hostile and extreme inputs (issue 11): the right answer or a clear error, never a hang or a raw traceback.

Each test names the defect it guards against; all of them failed before the fix.
"""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

import sekron
from sekron.cli import main

# --- the size budget -------------------------------------------------------------------


@pytest.fixture
def small_budget():
    old = sekron.set_max_elements(10**6)
    yield 10**6
    sekron.set_max_elements(old)


def test_to_tensor_of_a_huge_tensor_is_refused_before_allocating() -> None:
    sk = sekron.random_sekron([(2**10, 2**10), (2**10, 2**10)], 1)  # W would have 2^40 entries
    with pytest.raises(ValueError, match=r"1,099,511,627,776 elements.*set_max_elements"):
        sk.to_tensor()


def test_budget_is_adjustable(small_budget: int) -> None:
    sk = sekron.random_sekron([(2**5, 2**5), (2**6, 2**5)], 1)  # 2^21 entries: over the small budget
    with pytest.raises(ValueError, match="size budget of 1,000,000"):
        sk.to_tensor()
    sekron.set_max_elements(10**7)
    assert sk.to_tensor().shape == (2**11, 2**10)
    with pytest.raises(ValueError, match="integer >= 1"):
        sekron.set_max_elements(0)


def test_every_dense_path_honours_the_budget(small_budget: int) -> None:
    sk = sekron.random_sekron([(2**5, 2**5), (2**6, 2**5)], 1)  # 2^21 entries: below DENSE_LIMIT, above the budget
    with pytest.raises(ValueError, match=r"numpy.asarray.*size budget of 1,000,000"):
        np.asarray(sk)
    vec = sekron.random_sekron([(2**11,), (2**10,)], 1)  # 1-D, 2^21 entries
    with pytest.raises(ValueError, match=r"slice.*size budget"):
        vec[:: 3]


def test_dask_first_gram_honours_the_budget(small_budget: int) -> None:
    da = pytest.importorskip("dask.array")
    x = da.ones((2**11, 2**11), chunks=(2**11, 2**8))  # P_1 = 2^11: its Gram has 2^22 entries
    with pytest.raises(ValueError, match=r"Gram matrix.*size budget"):
        sekron.decompose(x, [(2**11, 1), (1, 2**11)], tol=0.1)


def test_random_sekron_huge_rank_is_refused() -> None:
    with pytest.raises(ValueError, match="8,000,000,000 elements"):
        sekron.random_sekron([(2, 2), (2, 2)], 10**9)


def test_random_sekron_unknown_keyword() -> None:
    with pytest.raises(TypeError, match=r"unknown keyword arguments \['foo'\]"):
        sekron.random_sekron([(2, 2), (2, 2)], 2, foo=1)


# --- SeKronTensor dtypes, sharing, star import ------------------------------------------------


@pytest.mark.parametrize("dtype", [np.int8, np.int64, bool, object])
def test_non_float_factors_are_refused(dtype: type) -> None:
    f = np.full((1, 1, 1), 100).astype(dtype)
    with pytest.raises(TypeError, match="floating or complex dtype"):
        sekron.SeKronTensor([f, f], [(1, 1), (1, 1)])


def test_factor_sharing_is_documented_and_true() -> None:
    A, B = np.ones((1, 2, 2)), np.ones((1, 2, 2))
    sk = sekron.SeKronTensor([A, B], [(2, 2), (2, 2)])
    assert sk.factors[0] is A  # not copied ...
    doc = sekron.SeKronTensor.__doc__ or ""
    assert "not copied" in doc and "from_tt" in doc  # ... and the docstring says so


def test_star_import_does_not_shadow_round() -> None:
    ns: dict = {}
    exec("from sekron import *", ns)
    assert "round" not in ns
    assert "round" not in sekron.__all__ and callable(sekron.round)


# --- input kinds -----------------------------------------------------------------------


def test_numpy_matrix_is_refused_clearly() -> None:
    with pytest.raises(TypeError, match=r"numpy\.matrix.*numpy\.asarray"):
        sekron.decompose(np.asarray(np.ones((4, 4))).view(np.matrix), [(2, 2), (2, 2)])


def test_masked_array_is_refused_clearly() -> None:
    W = np.ma.masked_array(np.ones((4, 4)), mask=np.eye(4, dtype=bool))
    with pytest.raises(TypeError, match=r"masked array.*filled"):
        sekron.decompose(W, [(2, 2), (2, 2)])


def test_rank_as_a_zero_d_array() -> None:
    torch = pytest.importorskip("torch")
    W = np.random.default_rng(0).standard_normal((4, 4))
    for rank in (torch.tensor(2), np.int64(2), np.array(2)):
        assert sekron.decompose(W, [(2, 2), (2, 2)], rank=rank).rank == {"a": 2}
    Wt = torch.as_tensor(W)
    assert sekron.decompose(Wt, [(2, 2), (2, 2)], rank=np.int64(2)).rank == {"a": 2}
    with pytest.raises(TypeError, match="integer"):
        sekron.decompose(W, [(2, 2), (2, 2)], rank=torch.tensor(2.0))


# --- structures ------------------------------------------------------------------------


def test_structures_of_a_large_prime_is_fast() -> None:
    t = time.perf_counter()
    grids = sekron.structures((10**9 + 7,), 2)
    assert time.perf_counter() - t < 5
    assert [g.factor_shapes for g in grids] == [((1,), (10**9 + 7,)), ((10**9 + 7,), (1,))]


def test_structures_counts_before_listing() -> None:
    t = time.perf_counter()
    with pytest.raises(ValueError, match="82,653,950,016 grids"):
        sekron.structures((1024,) * 6, 3)
    assert time.perf_counter() - t < 5


def test_structures_count_formula_matches_listing() -> None:
    from sekron.structure import _count_factorizations, _ordered_factorizations

    for d in range(1, 130):
        for S in (1, 2, 3, 4):
            assert _count_factorizations(d, S) == len(list(_ordered_factorizations(d, S)))


# --- load ------------------------------------------------------------------------------


def _forge(src: Path, dst: Path, shape: tuple[int, ...]) -> None:
    """Copy a sekron .npz, replacing factor_0 by a header claiming ``shape`` and 64 bytes of data."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if name == "factor_0.npy":
                head = io.BytesIO()
                np.lib.format.write_array_header_1_0(head, {"descr": "<f8", "fortran_order": False, "shape": shape})
                data = head.getvalue() + b"\0" * 64
            zout.writestr(name, data)


def test_load_refuses_a_forged_header_before_allocating(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.npz", tmp_path / "bad.npz"
    sekron.save(good, sekron.random_sekron([(2, 2), (2, 2)], 1))
    _forge(good, bad, (1, 10**6, 10**6))
    assert bad.stat().st_size < 4000
    with pytest.raises(ValueError, match="1,000,000,000,000 elements"):
        sekron.load(bad)
    old = sekron.set_max_elements(10**13)
    try:
        with pytest.raises(ValueError, match="stores only 64 bytes"):
            sekron.load(bad)
    finally:
        sekron.set_max_elements(old)
    assert sekron.load(good).rank == {"a": 1}


def test_load_deeply_nested_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "deep.npz"
    np.savez(path, __sekron__=np.array("[" * 100000 + "]" * 100000))
    with pytest.raises(ValueError, match="nested too deeply"):
        sekron.load(path)
    assert main(["info", str(path)]) == 2
    assert "nested too deeply" in capsys.readouterr().err


# --- CLI -------------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    path = tmp_path / "w.npz"
    sekron.save(path, sekron.random_sekron([(2, 2), (3, 3)], 2))
    return path


def test_reconstruct_names_the_file_it_writes(saved: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reconstruct", str(saved), "-o", str(tmp_path / "W_hat2")]) == 0
    assert f"wrote {tmp_path / 'W_hat2.npy'}:" in capsys.readouterr().out
    assert (tmp_path / "W_hat2.npy").exists()


def test_output_that_is_a_directory(saved: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "outdir"
    out.mkdir()
    assert main(["reconstruct", str(saved), "-o", str(out)]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert not (tmp_path / "outdir.npy").exists()
    np.save(tmp_path / "w.npy", np.ones((4, 9)))
    assert main(["decompose", str(tmp_path / "w.npy"), "--structure", "2x3,2x3", "-o", str(out)]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_output_in_a_missing_directory(saved: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reconstruct", str(saved), "-o", str(tmp_path / "nope" / "w.npy")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_decompose_on_a_text_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "w.txt").write_text("1 2 3\n4 5 6\n")
    assert main(["decompose", str(tmp_path / "w.txt"), "--structure", "2x3", "-o", str(tmp_path / "o.npz")]) == 2
    err = capsys.readouterr().err
    assert "not a .npy file" in err and "pickle" not in err


# --- docs ------------------------------------------------------------------------------


def test_formats_page_runs_from_any_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import re

    pytest.importorskip("matplotlib")
    page = Path(__file__).resolve().parents[1] / "docs" / "formats.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    monkeypatch.chdir(tmp_path)  # not the repo root: no docs/img here
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(page), "exec"), namespace)  # verbatim, as a reader would paste it
    assert (tmp_path / "formats_tt.png").stat().st_size > 0


def test_limits_page_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import re

    page = Path(__file__).resolve().parents[1] / "docs" / "limits.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    assert blocks
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(page), "exec"), namespace)
    assert namespace["old"] == 2**31  # the documented default budget
