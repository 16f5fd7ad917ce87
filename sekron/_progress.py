"""Progress on stderr for long loops: tqdm when installed, else a plain text line with an ETA."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


class _NoBar:
    def update(self, k: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


class _TextBar:
    """``done/total``, elapsed seconds and an ETA, rewritten in place on stderr."""

    def __init__(self, total: int | None, desc: str) -> None:
        self.total, self.desc, self.done, self.start, self.width = total, desc, 0, time.perf_counter(), 0

    def update(self, k: int = 1) -> None:
        self.done += k
        elapsed = time.perf_counter() - self.start
        line = f"{self.desc} {self.done}/{self.total}" if self.total else f"{self.desc} {self.done}"
        line += f" [{elapsed:.0f}s"
        if self.total and self.done:
            line += f", ETA {elapsed / self.done * (self.total - self.done):.0f}s"
        line += "]"
        self.width = max(self.width, len(line))
        sys.stderr.write("\r" + line.ljust(self.width))
        sys.stderr.flush()

    def close(self) -> None:
        if self.width:
            sys.stderr.write("\r" + " " * self.width + "\r")
            sys.stderr.flush()


def bar(total: int | None, desc: str = "", enabled: bool = True) -> Any:
    """A progress bar with ``update(k)`` and ``close()``: tqdm, the plain text one, or a silent one.

    Examples
    --------
    >>> b = bar(3, "work", enabled=False)
    >>> b.update(1); b.close()
    """
    if not enabled:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _TextBar(total, desc)
    return tqdm(total=total, desc=desc, leave=False, file=sys.stderr)


def progress(items: Iterable[T], total: int | None = None, desc: str = "", enabled: bool = True) -> Iterator[T]:
    """Iterate over ``items`` while showing progress on stderr (see :func:`bar`)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    b = bar(total, desc, enabled)
    try:
        for item in items:
            yield item
            b.update(1)
    finally:
        b.close()
