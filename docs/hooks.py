"""mkdocs hook: serve MathJax from the site itself, so that neither the build nor the pages need a network.

MathJax comes from the ``django-static-mathjax`` package (MathJax 3, Apache-2.0, no
dependencies; declared in the ``docs`` extra). Only the single-file TeX component and
its CHTML fonts are copied into ``site/assets/mathjax``.
"""

from __future__ import annotations

import shutil
from importlib.util import find_spec
from pathlib import Path
from typing import Any

COMPONENT = "tex-chtml-full.js"
FONTS = Path("output") / "chtml" / "fonts" / "woff-v2"


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
    shutil.copytree(src / FONTS, dst / FONTS, dirs_exist_ok=True)
