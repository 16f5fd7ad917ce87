"""Save and load SeKron tensors as ``.npz`` files with JSON metadata (never pickle)."""

from __future__ import annotations

import json
import os
import zipfile
from typing import Any

import numpy as np
import tensorly as tl
from packaging.version import InvalidVersion, Version

from ._backend import using
from ._validation import check_size
from .sekron_tensor import SeKronTensor
from .structure import Structure

FORMAT = "sekron"
FORMAT_VERSION = 1
_META_KEY = "__sekron__"


def _factor_key(k: int) -> str:
    return f"factor_{k}"


def save(path: str | os.PathLike[str], sk: SeKronTensor) -> None:
    """Write ``sk`` to ``path`` as an ``.npz`` archive with JSON metadata.

    The archive holds one array per factor (``factor_0``, ``factor_1``, ..) and a JSON
    string ``__sekron__`` with the format version, the sekron version, the structure
    (factor shapes, bond labels, pattern), the ranks and the dtype. The path is used
    exactly as given (no ``.npz`` is appended).

    Examples
    --------
    >>> import os, tempfile, sekron
    >>> sk = sekron.random_sekron(sekron.Structure([(2, 2), (3, 3)]), 2)
    >>> path = os.path.join(tempfile.mkdtemp(), "w.npz")
    >>> sekron.save(path, sk)
    >>> sekron.load(path).rank
    {'a': 2}
    """
    if not isinstance(sk, SeKronTensor):
        raise TypeError(f"save expects a SeKronTensor, got {type(sk).__name__}")
    from . import __version__

    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "sekron_version": __version__,
        "structure": sk.structure.to_dict(),
        "rank": sk.rank,
        "dtype": str(sk.dtype),
    }
    from ._backend import infer_backend

    with using(infer_backend(sk)):
        arrays = {_factor_key(k): np.asarray(tl.to_numpy(f)) for k, f in enumerate(sk.factors)}
    arrays[_META_KEY] = np.array(json.dumps(meta))
    with open(os.fspath(path), "wb") as fh:
        np.savez(fh, **arrays)  # type: ignore[arg-type]


def _read_meta(archive: Any, path: str) -> dict[str, Any]:
    if _META_KEY not in archive.files:
        raise ValueError(f"{path!r} is an .npz archive but not a sekron file (no {_META_KEY!r} entry); "
                         "write it with sekron.save")
    try:
        meta = json.loads(str(archive[_META_KEY][()]))
    except (json.JSONDecodeError, ValueError) as exc:
        raise ValueError(f"{path!r}: the sekron metadata is not valid JSON ({exc}); the file is corrupt") from exc
    except RecursionError:
        raise ValueError(f"{path!r}: the sekron metadata is nested too deeply to be sekron's; the file is corrupt "
                         "or forged") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path!r}: metadata does not describe a sekron file: {meta!r}")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"{path!r} has format version {version!r}; this sekron reads up to {FORMAT_VERSION}: "
                         "upgrade sekron")
    try:
        Version(str(meta.get("sekron_version", "0")))
    except InvalidVersion as exc:
        raise ValueError(f"{path!r}: invalid sekron_version {meta.get('sekron_version')!r} in metadata") from exc
    return meta


def _check_member(archive: Any, key: str, path: str) -> None:
    """Read a factor's .npy header and refuse, before numpy allocates it, a shape the file cannot hold.

    A forged header can claim any shape; numpy would allocate that much memory before
    noticing that the data is missing.
    """
    zf = getattr(archive, "zip", None)
    if zf is None:
        return
    name = key + ".npy"
    try:
        info = zf.getinfo(name)
        with zf.open(name) as fh:
            version = np.lib.format.read_magic(fh)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = reader(fh)  # type: ignore[operator]
            header_len = fh.tell()
    except (KeyError, ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(f"{path!r}: the header of {key!r} could not be read ({exc}); the file is corrupt") from exc
    n = check_size(shape, f"{path!r}: factor {key!r} of shape {shape}", "the file may be forged or corrupt")
    need = n * np.dtype(dtype).itemsize
    if need > info.file_size - header_len:
        raise ValueError(f"{path!r}: factor {key!r} claims shape {shape} ({need:,} bytes of {np.dtype(dtype)}) but "
                         f"the archive stores only {info.file_size - header_len:,} bytes for it; the file is "
                         "corrupt or forged")


def load(path: str | os.PathLike[str]) -> SeKronTensor:
    """Read a SeKron tensor written by :func:`save`; the factors come back as numpy arrays.

    Convert them afterwards for another backend, e.g.
    ``SeKronTensor([torch.as_tensor(f) for f in sk.factors], sk.structure)``.

    Raises
    ------
    ValueError
        If the file is not a sekron archive, is corrupt, was written by a newer format,
        or a factor's header claims more data than the file holds or than the size
        budget allows (checked before anything is allocated).

    Examples
    --------
    >>> import os, tempfile, sekron
    >>> path = os.path.join(tempfile.mkdtemp(), "w.npz")
    >>> sekron.save(path, sekron.random_sekron(sekron.Structure.tt((3, 4)), 2))
    >>> sekron.load(path).structure.pattern
    'chain'
    """
    path = os.fspath(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise ValueError(f"{path!r} is not a readable .npz file ({exc}); was it written by sekron.save?") from exc
    if not hasattr(archive, "files"):
        raise ValueError(f"{path!r} holds a single array, not a sekron .npz archive")
    with archive:
        meta = _read_meta(archive, path)
        try:
            structure = Structure.from_dict(meta["structure"])
        except (TypeError, ValueError, KeyError) as exc:
            raise ValueError(f"{path!r}: invalid structure in metadata: {exc}") from exc
        keys = [_factor_key(k) for k in range(structure.n_factors)]
        missing = [k for k in keys if k not in archive.files]
        if missing:
            raise ValueError(f"{path!r} misses factor arrays {missing}; the file is truncated or corrupt")
        for k in keys:
            _check_member(archive, k, path)
        try:
            factors = [archive[k] for k in keys]
        except (ValueError, zipfile.BadZipFile, OSError) as exc:
            raise ValueError(f"{path!r}: a factor array could not be read ({exc}); the file is corrupt") from exc
    try:
        return SeKronTensor(factors, structure)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path!r}: factors do not match the stored structure: {exc}") from exc
