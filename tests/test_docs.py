"""The Python examples in the concept and tutorial pages run and their assertions hold."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = ["concepts.md", "getting_started.md"]


def python_blocks(page: str) -> str:
    text = (DOCS / page).read_text()
    return "\n".join(re.findall(r"```python\n(.*?)```", text, flags=re.S))


@pytest.mark.parametrize("page", PAGES)
def test_page_examples_run(page: str) -> None:
    code = python_blocks(page)
    assert code.strip(), f"{page} has no python examples"
    if "import torch" in code:
        pytest.importorskip("torch")
    exec(compile(code, str(DOCS / page), "exec"), {"__name__": "docs_example"})


def test_readme_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    text = (DOCS.parent / "README.md").read_text()
    code = "\n".join(re.findall(r"```python\n(.*?)```", text, flags=re.S))
    monkeypatch.chdir(tmp_path)  # the example saves w.npz
    exec(compile(code, "README.md", "exec"), {"__name__": "readme_example"})
    assert (tmp_path / "w.npz").exists()
