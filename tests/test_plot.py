"""draw: bond graph + factor-shape grid to PNG, for every pattern, structures and tensors."""

from __future__ import annotations

from pathlib import Path

import pytest

import sekron
from sekron.plot import draw

pytest.importorskip("matplotlib")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("pattern", ["nested", "chain", "ring", "cp", "tucker"])
def test_draw_structure_writes_png(pattern: str, tmp_path: Path) -> None:
    st = sekron.Structure([(4, 2, 3), (2, 4, 1), (2, 1, 3), (1, 2, 1)], pattern)
    out = draw(st, tmp_path / f"{pattern}.png")
    assert out == tmp_path / f"{pattern}.png"
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5000


def test_draw_sekron_tensor_shows_ranks(tmp_path: Path) -> None:
    sk = sekron.random_sekron(sekron.Structure([(2, 3), (3, 2), (2, 2)], "nested"), [2, 3])
    fig = draw(sk)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert "a=2" in texts and "b=3" in texts  # bond sizes of the tensor
    assert "3" in texts and "A1" in texts  # grid cells and factor names
    assert draw(sk, tmp_path / "sk.png").read_bytes()[:8] == PNG_MAGIC


def test_draw_custom_labels_and_axis_aligned(tmp_path: Path) -> None:
    custom = sekron.Structure([(2, 3), (2, 1), (1, 2)], labels=["ab", "a", "b"])
    assert draw(custom, tmp_path / "custom.png").exists()
    assert draw(sekron.Structure.tucker((4, 5, 6)), tmp_path / "tucker.png").exists()


def test_draw_rejects_other_objects() -> None:
    with pytest.raises(TypeError, match="Structure or SeKronTensor"):
        draw([(2, 2), (2, 2)])
