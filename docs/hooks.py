"""mkdocs hooks: MathJax served from the site itself, and Sphinx roles in docstrings shown as code.

MathJax: neither the build nor the pages need a network.

MathJax comes from the ``django-static-mathjax`` package (MathJax 3, Apache-2.0, no
dependencies; declared in the ``docs`` extra). Only one file is copied, into
``site/assets/mathjax``: the single-file TeX-to-SVG component, whose glyphs are inline
paths, so no web fonts are needed either.
"""

from __future__ import annotations

import re
import shutil
from importlib.util import find_spec
from pathlib import Path
from typing import Any

COMPONENT = "tex-svg-full.js"
#: a Sphinx cross-reference role left in front of inline code by the docstring renderer
SPHINX_ROLE = re.compile(r":(?:func|meth|class|mod|data|attr|obj|exc):(?=<code>)")


def _mathjax_root() -> Path:
    spec = find_spec("mathjax")
    locations = [] if spec is None or spec.submodule_search_locations is None else spec.submodule_search_locations
    for location in locations:
        root = Path(location) / "static" / "mathjax" / "es5"
        if (root / COMPONENT).is_file():
            return root
    raise RuntimeError(
        "the docs need MathJax from the 'django-static-mathjax' package, which is not installed; "
        "install the docs extra: pip install -e '.[docs]'"
    )


def on_post_build(config: Any, **kwargs: Any) -> None:
    src = _mathjax_root()
    dst = Path(config["site_dir"]) / "assets" / "mathjax"
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src / COMPONENT, dst / COMPONENT)


def on_page_content(html: str, **kwargs: Any) -> str:
    """Docstrings write ``:func:`conv``` (Sphinx style); the API pages show it as plain ``conv``."""
    return SPHINX_ROLE.sub("", html)
