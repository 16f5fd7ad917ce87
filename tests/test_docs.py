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


# --- the documentation site: API pages, mathematics, notebook -----------------------------

API = DOCS / "api"
DIRECTIVE = re.compile(r"^::: *([\w.]+)", flags=re.M)


def api_directives() -> list[str]:
    """The dotted paths of every ``::: path`` directive on the API pages."""
    return [m for page in sorted(API.glob("*.md")) for m in DIRECTIVE.findall(page.read_text())]


def resolve(path: str) -> object:
    """The object that a directive documents, found the way the documentation tool finds it.

    A dotted step names a submodule when a module file of exactly that name exists (then the
    page shows the module: ``sekron.linalg.als`` is the module, the function is
    ``sekron.linalg.als.cp_als``); otherwise it is an attribute (``sekron.conv`` is the
    function, although ``import sekron.conv`` gives the package ``sekron.convolution``).
    """
    import importlib

    parts = path.split(".")
    obj: object = importlib.import_module(parts[0])
    for i in range(1, len(parts)):
        full = ".".join(parts[: i + 1])
        try:
            module = importlib.import_module(full)
        except ImportError:
            module = None
        obj = module if module is not None and module.__name__ == full else getattr(obj, parts[i])
    return obj


@pytest.mark.parametrize("package", ["sekron", "sekron.torch"])
def test_api_pages_cover_every_public_name(package: str) -> None:
    """Every name in ``__all__`` has a ``::: ...`` directive on a page under docs/api/.

    When this fails after adding a public name: add ``::: sekron.NAME`` (or
    ``::: sekron.torch.NAME``) to the fitting page in docs/api/ (a new page also goes into
    the ``nav`` of mkdocs.yml).
    """
    import importlib

    if package == "sekron.torch":
        pytest.importorskip("torch.nn")  # torch.nn: tests/torch must not pass for torch itself
    mod = importlib.import_module(package)
    documented = {id(resolve(path)) for path in api_directives()
                  if path.startswith(package) and (package == "sekron.torch") == path.startswith("sekron.torch")}
    documented_names = {path.rsplit(".", 1)[-1] for path in api_directives()}
    missing = [name for name in mod.__all__
               if name not in documented_names or id(getattr(mod, name)) not in documented]
    assert not missing, (
        f"public names of {package} without an entry in docs/api/*.md: {missing}; "
        f"add '::: {package}.NAME' to the fitting page in docs/api/")


def test_api_directives_resolve() -> None:
    """Every directive names an importable object (a renamed function breaks no page silently)."""
    paths = api_directives()
    assert len(paths) >= 40
    for path in paths:
        if path.startswith("sekron.torch"):
            pytest.importorskip("torch.nn")
        resolve(path)


def test_math_sections_cited_by_the_code_exist() -> None:
    """``docs/math.md §N`` in the code or the docs points at a section that math.md has."""
    math_md = (DOCS / "math.md").read_text()
    sections = set(re.findall(r"^#{2,3} §(\d+(?:\.\d+)?) ", math_md, flags=re.M))
    assert {str(n) for n in range(1, 7)} <= sections, "math.md must keep its sections §1-§6"
    for n in sections:  # every section has the stable anchor the pages link to
        assert "{ #s" + n.replace(".", "-") + " }" in math_md
    root = DOCS.parent
    files = [*(root / "sekron").rglob("*.py"), *DOCS.rglob("*.md"), root / "README.md"]
    cited = {(str(f.relative_to(root)), n) for f in files
             for n in re.findall(r"math\.md ?§ ?(\d+(?:\.\d+)?)", f.read_text())}
    stale = sorted(str(f.relative_to(root)) for f in files if f.name != "math.md" and "MATH" + ".md" in f.read_text())
    assert not stale, f"cite docs/math.md §N, not a file the repo lacks: {stale}"
    bad = sorted(c for c in cited if c[1] not in sections)
    assert not bad, f"citations of sections that docs/math.md lacks: {bad}"
    anchors = {f.name: re.findall(r"math\.md#(s[\d-]+)", f.read_text()) for f in DOCS.rglob("*.md")}
    bad_links = sorted((page, a) for page, links in anchors.items() for a in links
                       if a[1:].replace("-", ".") not in sections)
    assert not bad_links, f"links to missing math.md anchors: {bad_links}"


def test_tour_notebook_runs() -> None:
    """docs/notebooks/tour.ipynb runs top to bottom without an error (numpy only)."""
    import os

    import nbformat
    from nbclient import NotebookClient

    path = DOCS / "notebooks" / "tour.ipynb"
    nb = nbformat.read(path, as_version=4)
    assert sum(cell.cell_type == "code" for cell in nb.cells) >= 8
    stored = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert stored and not any(o.get("output_type") == "error" for o in stored), (
        "the notebook is stored with its outputs (the site renders them without running it)")
    env_path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(DOCS.parent), env_path) if p)
    try:
        NotebookClient(nb, timeout=120, kernel_name="python3",
                       resources={"metadata": {"path": str(DOCS.parent)}}).execute()
    finally:
        os.environ["PYTHONPATH"] = env_path
        if not env_path:
            del os.environ["PYTHONPATH"]
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    errors = [o for o in outputs if o.get("output_type") == "error"]
    assert not errors, errors
    text = "".join(o.get("text", "") for o in outputs)
    assert "factorized == dense: True" in text and "reproduced: True" in text
    assert "to_cp exact: True" in text and "same tensor: True" in text
