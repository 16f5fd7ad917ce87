"""save/load: round trip, no pickle, clear errors on foreign or corrupt files."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

import sekron
from sekron import Structure


@pytest.mark.parametrize("pattern", ["nested", "chain", "ring", "cp", "tucker"])
def test_round_trip_every_pattern(tmp_path: Path, pattern: str) -> None:
    st = Structure([(2, 3, 1), (2, 1, 2), (1, 2, 3)], pattern)
    sk = sekron.random_sekron(st, 2, random_state=1)
    path = tmp_path / "w.npz"
    sekron.save(path, sk)
    back = sekron.load(path)
    assert back.structure == st and back.structure.pattern == pattern
    assert back.rank == sk.rank
    np.testing.assert_array_equal(back.to_tensor(), sk.to_tensor())
    assert path.exists() and not (tmp_path / "w.npz.npz").exists()


def test_custom_labels_and_complex(tmp_path: Path) -> None:
    st = Structure([(2, 2), (3, 1), (1, 3)], labels=["ab", "a", "b"])
    sk = sekron.random_sekron(st, {"a": 2, "b": 3}, dtype=np.complex128)
    sekron.save(tmp_path / "c.npz", sk)
    back = sekron.load(tmp_path / "c.npz")
    assert back.structure.pattern is None and back.dtype == np.complex128
    np.testing.assert_allclose(back.to_tensor(), sk.to_tensor())


def test_torch_factors_are_saved(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    st = Structure([(2, 2), (3, 3)])
    sk = sekron.SeKronTensor([torch.ones(1, 2, 2, requires_grad=True), torch.ones(1, 3, 3)], st)
    sekron.save(tmp_path / "t.npz", sk)
    np.testing.assert_array_equal(sekron.load(tmp_path / "t.npz").to_tensor(), np.ones((6, 6)))


def test_no_pickle_in_file(tmp_path: Path) -> None:
    sekron.save(tmp_path / "w.npz", sekron.random_sekron(Structure([(2, 2), (2, 2)]), 1))
    with np.load(tmp_path / "w.npz", allow_pickle=False) as archive:
        assert set(archive.files) == {"__sekron__", "factor_0", "factor_1"}
        meta = json.loads(str(archive["__sekron__"][()]))
    assert meta["format"] == "sekron" and meta["structure"]["labels"] == ["a", "a"]


def test_foreign_npz(tmp_path: Path) -> None:
    np.savez(tmp_path / "other.npz", x=np.ones(3))
    with pytest.raises(ValueError, match="not a sekron file"):
        sekron.load(tmp_path / "other.npz")


def test_plain_npy(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.ones(3))
    with pytest.raises(ValueError, match="single array"):
        sekron.load(tmp_path / "a.npy")


def test_corrupt_bytes(tmp_path: Path) -> None:
    (tmp_path / "bad.npz").write_bytes(b"this is not a zip file")
    with pytest.raises(ValueError, match=r"not a readable \.npz"):
        sekron.load(tmp_path / "bad.npz")


def test_missing_factor_and_newer_version(tmp_path: Path) -> None:
    sekron.save(tmp_path / "w.npz", sekron.random_sekron(Structure([(2, 2), (2, 2)]), 1))
    with np.load(tmp_path / "w.npz") as archive:
        meta = json.loads(str(archive["__sekron__"][()]))
        f0 = archive["factor_0"]
    np.savez(tmp_path / "trunc.npz", __sekron__=np.array(json.dumps(meta)), factor_0=f0)
    with pytest.raises(ValueError, match="misses factor arrays"):
        sekron.load(tmp_path / "trunc.npz")
    meta["format_version"] = 99
    np.savez(tmp_path / "new.npz", __sekron__=np.array(json.dumps(meta)), factor_0=f0, factor_1=f0)
    with pytest.raises(ValueError, match="upgrade sekron"):
        sekron.load(tmp_path / "new.npz")


def test_bad_json_and_shape_mismatch(tmp_path: Path) -> None:
    np.savez(tmp_path / "j.npz", __sekron__=np.array("{not json"))
    with pytest.raises(ValueError, match="not valid JSON"):
        sekron.load(tmp_path / "j.npz")
    meta = {"format": "sekron", "format_version": 1, "sekron_version": "0.1.0",
            "structure": {"factor_shapes": [[2, 2], [2, 2]], "labels": ["a", "a"], "pattern": "nested"}}
    np.savez(tmp_path / "m.npz", __sekron__=np.array(json.dumps(meta)), factor_0=np.ones((1, 2, 2)),
             factor_1=np.ones((2, 2, 2)))
    with pytest.raises(ValueError, match="do not match the stored structure"):
        sekron.load(tmp_path / "m.npz")


def test_save_rejects_non_sekron(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="SeKronTensor"):
        sekron.save(tmp_path / "x.npz", np.ones(3))  # type: ignore[arg-type]


def test_zip_without_npy(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "z.npz", "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(ValueError, match="not a sekron file"):
        sekron.load(tmp_path / "z.npz")
