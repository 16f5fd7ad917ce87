"""A cache of per-layer search state, keyed by the weight's content and the call's arguments.

What the search computes for one weight splits into ratio-independent work and cheap
bookkeeping. The expensive, reusable pieces are memoised here, each under a key made of
the content hash of the array it was computed from and the exact arguments of the call:

- ``svals``: the squared singular values of an S = 2 grid's matrix ``R(W)`` (every rank);
- ``level1``: the level-1 split ``(P_1 | P_2 P_3)`` of an S = 3 refinement (``s^2`` and rows ``C``);
- ``cp``: the CP-ALS factors at one rank and sweep count (and the chain of ranks it was warm-started
  from), with the exact error ``decompose`` gives them; keyed by the content of the CP problem (its
  tensor, modes by decreasing size), so two grids that are the same problem share one fit;
- ``caps``: one rank-capped TT / TR / Tucker decomposition (its ranks and error);
- ``cpstart``: the leading vectors of each unfolding of a CP problem at the root rank of compress's octave
  chains, from which the fits below the root start;
- cheaper ones that a second ratio would otherwise redo: ``three`` (the nested / chain / tucker spectra of
  an S = 3 refinement), ``screen`` (the spectrum behind a coordinate-descent screen), ``profiles`` (TT / TR /
  Tucker rank profiles) and ``capsfit`` (those profiles fitted to a budget).

A value is only ever reused for the same array content and the same arguments, so a
search with a warm cache returns exactly what a cold one returns; what changes with the
compression ratio (the budgets, hence the ALS ranks) simply misses.

Entries are plain dicts of numpy arrays, so they cross process boundaries as they are and
live on disk as ``.npz`` files (read with ``allow_pickle=False``) with a JSON index, never
as pickles.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

Entry = dict[str, np.ndarray]

#: layout version of the on-disk cache (bumped when keys or entries change meaning)
VERSION = 4  # 3: CP fits with the dimension-tree MTTKRP of _scoring._TreeMTTKRP (values move in the last bits);
#             4: CP fits of tall problems on their QR-compressed tensor (_scoring._compressed; the last bits again)


def weight_hash(W: np.ndarray) -> str:
    """Content hash of an array: blake2b of its bytes, dtype and shape.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.arange(6.0).reshape(2, 3)
    >>> weight_hash(a) == weight_hash(a.copy()), weight_hash(a) == weight_hash(a.reshape(3, 2))
    (True, False)
    """
    A = np.ascontiguousarray(W)
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{A.dtype.str}|{A.shape}|".encode())
    h.update(A.view(np.uint8).reshape(-1).data if A.size else b"")
    return h.hexdigest()


def _nbytes(entry: Mapping[str, np.ndarray]) -> int:
    return sum(int(a.nbytes) for a in entry.values())


def _copy_arrays(value: Any) -> Any:
    """``value`` with every numpy array copied (lists, tuples and dicts rebuilt, other leaves shared)."""
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, (list, tuple)):
        return type(value)(_copy_arrays(v) for v in value)
    if isinstance(value, dict):
        return {k: _copy_arrays(v) for k, v in value.items()}
    return value


def _deep_nbytes(value: Any) -> int:
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, (list, tuple)):
        return sum(_deep_nbytes(v) for v in value)
    if isinstance(value, dict):
        return sum(_deep_nbytes(v) for v in value.values())
    return 0


class SearchCache:
    """Per-weight search state in memory, optionally mirrored on disk.

    Parameters
    ----------
    cache_dir : str or Path, optional
        Directory of the on-disk copy: one folder per weight hash holding ``index.json`` and
        one ``.npz`` per entry. Created when missing.
    max_bytes : int
        Memory bound; the least recently used weights are dropped beyond it.

    Attributes
    ----------
    hits, misses : int
        Lookups answered from the cache, and computed afresh (counted by the workers too).

    Examples
    --------
    >>> import numpy as np
    >>> from sekron.structure_search import families
    >>> cache = SearchCache()
    >>> W = np.random.default_rng(0).standard_normal((8, 8, 3, 3))
    >>> with cache.using(W):
    ...     a = families(W, 100.0, (2,), ("nested",), ())
    >>> with cache.using(W):
    ...     b = families(W, 60.0, (2,), ("nested",), ())
    >>> cache.hits > 0
    True
    """

    def __init__(self, cache_dir: str | os.PathLike[str] | None = None, max_bytes: int = 1 << 30) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(f"max_bytes must be an int >= 0, got {max_bytes!r}")
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        if self.cache_dir is not None:
            if self.cache_dir.exists() and not self.cache_dir.is_dir():
                raise ValueError(f"cache_dir must be a directory, got the file {str(self.cache_dir)!r}")
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self._weights: OrderedDict[str, dict[str, Entry]] = OrderedDict()
        self._bytes = 0
        self._loaded: set[str] = set()
        self._results: OrderedDict[tuple[str, str, float], tuple[Any, int]] = OrderedDict()
        self._result_bytes = 0

    # --- whole per-layer results (in memory only) ----------------------------------------
    def result(self, key: tuple[str, str, float]) -> Any | None:
        """A layer's whole result kept by :meth:`keep_result` (a copy), or None.

        ``key`` is ``(weight hash, method, anchor)``: the per-layer scoring is a function of
        the weight, the method and the anchor of its budget only, so a second compress at a
        ratio in the same octave gets the very result a cold run would compute.
        """
        got = self._results.get(key)
        if got is None:
            return None
        self._results.move_to_end(key)
        return _copy_arrays(got[0])

    def keep_result(self, key: tuple[str, str, float], value: Any) -> None:
        """Keep ``value`` (plain data and numpy arrays, copied) under ``key``, least recently used
        results dropped beyond half of ``max_bytes``."""
        if key in self._results:
            return
        value = _copy_arrays(value)
        size = _deep_nbytes(value)
        self._results[key] = (value, size)
        self._result_bytes += size
        while self._result_bytes > self.max_bytes // 2 and len(self._results) > 1:
            _, (_, dropped) = self._results.popitem(last=False)
            self._result_bytes -= dropped

    # --- per weight --------------------------------------------------------------------
    def entries(self, whash: str) -> dict[str, Entry]:
        """Every entry stored for the weight with hash ``whash`` (loading the disk copy once)."""
        if whash not in self._loaded and self.cache_dir is not None:
            self._loaded.add(whash)
            for key, entry in _read_dir(self.cache_dir / whash).items():
                self._store(whash, key, entry)
        got = self._weights.get(whash, {})
        if whash in self._weights:
            self._weights.move_to_end(whash)
        return dict(got)

    def update(self, whash: str, new: Mapping[str, Entry]) -> None:
        """Add entries computed for the weight ``whash`` (and write them to disk when it has a directory)."""
        for key, entry in new.items():
            self._store(whash, key, entry)
        if self.cache_dir is not None and new:
            _write_dir(self.cache_dir / whash, new)
        self._evict()

    def _store(self, whash: str, key: str, entry: Entry) -> None:
        group = self._weights.setdefault(whash, {})
        if key not in group:
            group[key] = {k: np.require(v, requirements=["C", "A"]) for k, v in entry.items()}  # aligned copies
            self._bytes += _nbytes(group[key])

    def _evict(self) -> None:
        while self._bytes > self.max_bytes and len(self._weights) > 1:
            whash, group = self._weights.popitem(last=False)
            self._bytes -= sum(_nbytes(e) for e in group.values())
            self._loaded.discard(whash)  # read its disk copy again when it is next asked for

    def clear(self) -> None:
        """Forget the in-memory entries (the disk copy stays) and reset the counters."""
        self._weights.clear()
        self._loaded.clear()
        self._bytes = 0
        self._results.clear()
        self._result_bytes = 0
        self.hits = self.misses = 0

    @contextlib.contextmanager
    def using(self, W: np.ndarray) -> Iterator[None]:
        """Serve and record the search state of ``W`` while the block runs (in this process)."""
        whash = weight_hash(W)
        memo = Memo(W, whash, self.entries(whash))
        with memo.active():
            yield
        self.hits += memo.hits
        self.misses += memo.misses
        self.update(whash, memo.new)


class Memo:
    """The entries of one weight during one search: the known ones, and those computed now."""

    def __init__(self, W: np.ndarray, whash: str, known: Mapping[str, Entry] | None = None) -> None:
        self.W = W
        self.whash = whash
        self.known: dict[str, Entry] = dict(known or {})
        self.new: dict[str, Entry] = {}
        self.hits = 0
        self.misses = 0
        self._hashes: dict[int, tuple[np.ndarray, str]] = {}

    def array_hash(self, A: np.ndarray) -> str:
        if A is self.W:
            return self.whash
        if id(A) not in self._hashes:
            self._hashes[id(A)] = (A, weight_hash(A))  # the array is held so that its id stays unique
        return self._hashes[id(A)][1]

    @contextlib.contextmanager
    def active(self) -> Iterator[Memo]:
        token = _ACTIVE.set(self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)


_ACTIVE: contextvars.ContextVar[Memo | None] = contextvars.ContextVar("sekron_search_memo", default=None)


def _plain(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in sorted(value.items())}
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return value


def memo(kind: str, A: np.ndarray, args: Mapping[str, Any], compute: Callable[[], Entry]) -> Entry:
    """``compute()``, or its stored result for the same content of ``A`` and the same ``args``.

    Without an active cache (:meth:`SearchCache.using`, or a worker's :class:`Memo`) it just computes,
    except the CP fits (``kind`` ``cp``): those are still computed once per content of ``A`` and ``args``
    within one search (the block of :func:`sekron.linalg.svd.shared_eigh` that the search runs in), as a
    worker's Memo does, so that a layer's two families that are one CP problem are fitted once.
    """
    m = _ACTIVE.get()
    if m is None and kind != "cp":
        return compute()
    if m is None:
        from ..linalg.svd import shared_result

        fits: dict[str, Entry] = shared_result(kind, A, lambda _: {})  # one table (and one kept copy) per content
        call = json.dumps(_plain(dict(args)), sort_keys=True)
        if call not in fits:
            fits[call] = {k: np.asarray(v) for k, v in compute().items()}
        return fits[call]
    key = kind + ":" + m.array_hash(A)[:16] + ":" + json.dumps(_plain(dict(args)), sort_keys=True)
    got = m.known.get(key)
    if got is None:
        got = m.new.get(key)
    if got is not None:
        m.hits += 1
        return got
    m.misses += 1
    entry = {k: np.asarray(v) for k, v in compute().items()}
    m.new[key] = entry
    return entry


# --- disk ----------------------------------------------------------------------------------
def _file_of(key: str) -> str:
    return hashlib.blake2b(key.encode(), digest_size=16).hexdigest() + ".npz"


def _read_dir(folder: Path) -> dict[str, Entry]:
    index = folder / "index.json"
    if not index.is_file():
        return {}
    try:
        meta = json.loads(index.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(meta, dict) or meta.get("version") != VERSION:
        return {}
    out: dict[str, Entry] = {}
    entries = meta.get("entries", {})
    for key, name in (entries.items() if isinstance(entries, dict) else []):
        # only names this module writes: a damaged or hostile index cannot point elsewhere
        if not isinstance(name, str) or name != _file_of(str(key)) or not (folder / name).is_file():
            continue
        try:
            with np.load(folder / name, allow_pickle=False) as data:
                out[str(key)] = {k: np.array(data[k]) for k in data.files}
        except (OSError, ValueError, KeyError, EOFError):  # unreadable: recomputed, then rewritten
            continue
    return out


def _write_dir(folder: Path, new: Mapping[str, Entry]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    index = folder / "index.json"
    meta: dict[str, Any] = {"version": VERSION, "entries": {}}
    if index.is_file():
        try:
            old = json.loads(index.read_text())
            if isinstance(old, dict) and old.get("version") == VERSION:
                meta["entries"] = dict(old.get("entries", {}))
        except (OSError, ValueError):
            pass
    for key, entry in new.items():
        name = _file_of(key)
        _atomic(folder / name, lambda f, entry=entry: np.savez(f, **entry))  # type: ignore[misc]
        meta["entries"][key] = name
    _atomic(index, lambda f: f.write(json.dumps(meta, indent=0, sort_keys=True).encode()))


def _atomic(path: Path, write: Callable[[Any], None]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


_DEFAULT: SearchCache | None = None
_BY_DIR: dict[str, SearchCache] = {}


def default_cache(cache_dir: str | os.PathLike[str] | None = None) -> SearchCache:
    """The process-wide cache (one per ``cache_dir``), which :func:`sekron.torch.compress` uses by default.

    Examples
    --------
    >>> default_cache() is default_cache()
    True
    """
    global _DEFAULT
    if cache_dir is None:
        if _DEFAULT is None:
            _DEFAULT = SearchCache()
        return _DEFAULT
    path = str(Path(cache_dir).resolve())
    if path not in _BY_DIR:
        _BY_DIR[path] = SearchCache(path)
    return _BY_DIR[path]
