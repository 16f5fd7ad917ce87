"""A progress bar for long loops: tqdm when installed, else a plain text bar on stderr."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], total: int | None = None, desc: str = "", enabled: bool = True) -> Iterator[T]:
    """Iterate over ``items`` while showing progress on stderr."""
    if not enabled:
        yield from items
        return
    try:
        from tqdm.auto import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None:
        yield from tqdm(items, total=total, desc=desc, leave=False, file=sys.stderr)
        return
    n = total if total is not None else (len(items) if hasattr(items, "__len__") else None)  # type: ignore[arg-type]
    for i, item in enumerate(items, start=1):
        yield item
        done = f"{i}/{n}" if n else str(i)
        sys.stderr.write(f"\r{desc} {done}")
        sys.stderr.flush()
    sys.stderr.write("\r" + " " * (len(desc) + 20) + "\r")
