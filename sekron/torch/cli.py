"""``sekron compress MODEL.pt --ratio 10 -o OUT.pt``: compress a saved PyTorch model from the shell.

Why a state dict plus the model's Python class, and not a TorchScript or ``torch.export``
file: compression swaps layers for SeKron layers, which needs the model as Python
modules (``set_submodule``). A scripted or exported program is a frozen graph whose
layers cannot be replaced, so it is refused with that explanation. The input is
therefore either

- a state dict (``torch.save(model.state_dict(), "MODEL.pt")``) with ``--arch
  module:factory`` (or ``path/to/file.py:factory``) naming a function that builds the
  dense model, loaded with ``weights_only=True``; or
- a whole pickled module (``torch.save(model, "MODEL.pt")``) with ``--allow-pickle``
  (unpickling runs code: only for files you trust).

The output is the compressed model's state dict, loadable with ``weights_only=True`` by
``sekron.torch.load_compressed(factory(), torch.load("OUT.pt"))``.

``--calibration DIR_OR_NPY`` gives unlabeled inputs (no labels needed): a ``.npy`` file
of inputs ``(N, ...)``, or a folder of ``.npy`` files (each a batch, concatenated in name
order). Then each compressed layer is fitted to the dense layer's outputs and the budget
is allocated by measured sensitivity (see :func:`sekron.torch.compress`).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..cli import check_output
from .compression import ALLOCATIONS, BUDGETS, METHODS, OBJECTIVES, compress


def _factory(spec: str) -> Callable[[], nn.Module]:
    if ":" not in spec:
        raise ValueError(f"--arch must look like 'package.module:factory' or 'file.py:factory', got {spec!r}")
    where, name = spec.rsplit(":", 1)
    if where.endswith(".py"):
        if not Path(where).is_file():
            raise ValueError(f"--arch {spec!r}: the file {where!r} does not exist")
        loader = importlib.util.spec_from_file_location(Path(where).stem, where)
        if loader is None or loader.loader is None:
            raise ValueError(f"--arch: cannot import {where!r}")
        module = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as exc:
            raise ValueError(f"--arch {spec!r}: cannot import the module {where!r} ({exc}); give an importable "
                             "module (check PYTHONPATH) or a path ending in .py") from None
    factory = getattr(module, name, None)
    if not callable(factory):
        raise ValueError(f"--arch: {where!r} has no callable {name!r}")
    return factory  # type: ignore[no-any-return]


def _is_torchscript(path: str) -> bool:
    """TorchScript archives are zip files with compiled code and a constants table."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in archive.namelist())


def load_model(path: str, arch: str | None = None, allow_pickle: bool = False) -> nn.Module:
    """The dense model saved at ``path`` (see the module docstring for the accepted files)."""
    if _is_torchscript(path):
        raise ValueError(f"{path} is a TorchScript program: its layers are compiled and cannot be swapped; save the "
                         "Python model's state_dict and pass --arch module:factory")
    if arch is not None:
        model = _factory(arch)()
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise
        except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for unreadable files
            raise ValueError(
                f"{path}: not a state dict that loads with weights_only=True (torch.load raised "
                f"{type(exc).__name__}); "
                "sekron never unpickles arbitrary objects from a state-dict file: save the model with "
                "torch.save(model.state_dict(), path)") from None
        try:
            model.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as exc:
            raise ValueError(f"{path}: the state dict does not fit the model that --arch {arch!r} builds: "
                             f"{str(exc).strip()[:500]}") from None
        return model
    if not allow_pickle:
        raise ValueError(f"{path}: pass --arch module:factory to load a state dict, or --allow-pickle to unpickle a "
                         "whole nn.Module (only for trusted files)")
    obj = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(obj, nn.Module):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not an nn.Module; pass --arch for a state dict")
    return obj


def load_calibration(path: str) -> torch.Tensor:
    """Calibration inputs from a ``.npy`` file or a folder of ``.npy`` files (concatenated in name order)."""
    import numpy as np

    where = Path(path)
    if where.is_dir():
        files = sorted(where.glob("*.npy"))
        if not files:
            raise ValueError(f"--calibration: the folder {path} holds no .npy file; save the inputs with "
                             "numpy.save(DIR / 'batch0.npy', x) (x of shape (N, ...))")
        arrays = [np.load(f, allow_pickle=False) for f in files]
        shapes = {a.shape[1:] for a in arrays}
        if len(shapes) != 1:
            raise ValueError(f"--calibration: the .npy files in {path} must share one input shape, "
                             f"got {sorted(shapes)}")
        data = np.concatenate(arrays)
    elif where.is_file() and where.suffix == ".npy":
        data = np.load(where, allow_pickle=False)
    else:
        raise ValueError(f"--calibration must be a .npy file or a folder of .npy files, got {path!r}")
    if data.ndim < 2 or data.shape[0] == 0:
        raise ValueError(f"--calibration: inputs must have shape (N, ...) with N >= 1, got {data.shape}")
    return torch.from_numpy(np.ascontiguousarray(data))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sekron compress", description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("model", help="state dict (with --arch) or pickled nn.Module (with --allow-pickle)")
    p.add_argument("--ratio", type=float, required=True, help="parameters (or, with --budget macs, deployed MACs) "
                   "before / after, > 1")
    p.add_argument("--budget", choices=list(BUDGETS), default="params",
                   help="what --ratio divides: the parameters, or the MACs of the deployed model (needs "
                   "--input-shape or --calibration)")
    p.add_argument("-o", "--output", required=True, help="where to write the compressed state dict")
    p.add_argument("--arch", help="'package.module:factory' or 'file.py:factory' building the dense model")
    p.add_argument("--allow-pickle", action="store_true", help="load a whole pickled nn.Module (trusted files only)")
    p.add_argument("--method", default="sekron", choices=list(METHODS))
    p.add_argument("--input-shape", help="model input shape for MACs, e.g. 1,3,32,32")
    p.add_argument("--include", action="append", help="module name or pattern to compress (repeatable)")
    p.add_argument("--exclude", action="append", help="module name or pattern to keep dense (repeatable)")
    p.add_argument("--keep-first", dest="skip_first", action="store_true", default=True,
                   help="keep the first conv/linear layer dense (default)")
    p.add_argument("--compress-first", dest="skip_first", action="store_false")
    p.add_argument("--min-kernel-size", type=int, default=1024)
    p.add_argument("--jobs", type=int, default=-1, help="worker processes for the search (-1: all cores, 1: none)")
    p.add_argument("--cache-dir", help="keep the per-layer search state here (npz + JSON) for later runs")
    p.add_argument("--report", help="also write the report (rows and totals) as JSON here")
    p.add_argument("--calibration", help="unlabeled inputs: a .npy file (N, ...) or a folder of .npy files")
    p.add_argument("--objective", choices=list(OBJECTIVES), help="'output' (default with --calibration) or 'weight'")
    p.add_argument("--allocation", choices=list(ALLOCATIONS),
                   help="'sensitivity' (default with --calibration), 'error' (default without) or 'uniform'")
    p.add_argument("--max-samples", type=int, default=32768, help="patch positions per layer for the output fit")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no table")
    p.add_argument("--onnx", metavar="OUT.onnx",
                   help="also write the deployable ONNX file (plain convs, see sekron.torch.to_standard); "
                        "needs --input-shape")
    return p


def write_onnx(model: nn.Module, path: str, input_shape: Sequence[int], dynamo: bool | None = None) -> None:
    """Export ``to_standard(model)`` in eval mode to ``path`` for inputs of ``input_shape`` (any batch size).

    ``dynamo=None`` takes the dynamo exporter when ``onnxscript`` is installed, torch's
    TorchScript-based exporter otherwise.
    """
    from .export import to_standard

    plain = to_standard(model).eval()
    param = next(plain.parameters())
    x = torch.zeros(tuple(input_shape), dtype=param.dtype, device=param.device)
    if dynamo is None:
        dynamo = importlib.util.find_spec("onnxscript") is not None
    with torch.no_grad():
        names: dict[str, Any] = {"input_names": ["input"], "output_names": ["output"]}
        if dynamo:
            torch.onnx.export(plain, (x,), path, dynamo=True, dynamic_shapes=({0: torch.export.Dim.DYNAMIC},), **names)
        else:
            torch.onnx.export(plain, (x,), path, dynamo=False, dynamic_axes={"input": {0: "batch"}}, **names)


def compress_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``sekron compress``; returns the exit status.

    Examples
    --------
    >>> build_parser().parse_args(["model.pt", "--ratio", "10", "-o", "small.pt", "--arch", "pkg.nets:build"]).ratio
    10.0
    """
    args = build_parser().parse_args(argv)
    if args.onnx and not args.input_shape:
        print("sekron compress: error: --onnx needs --input-shape (the shape of the example input to export with, "
              "e.g. 1,3,224,224)", file=sys.stderr)
        return 2
    try:
        # every output path is checked before the (slow) compression, so nothing fails after a partial write
        check_output(args.output)
        if args.report:
            check_output(args.report, "--report")
        if args.onnx:
            check_output(args.onnx, "--onnx")
        model = load_model(args.model, args.arch, args.allow_pickle)
        shape = None if args.input_shape is None else tuple(int(s) for s in args.input_shape.split(","))
        calibration = None if args.calibration is None else load_calibration(args.calibration)
        small, report = compress(model, args.ratio, method=args.method, include=args.include, exclude=args.exclude,
                                 skip_first=args.skip_first, min_kernel_size=args.min_kernel_size,
                                 input_shape=shape, inplace=True, progress=not args.quiet, n_jobs=args.jobs,
                                 cache_dir=args.cache_dir, calibration=calibration, objective=args.objective,
                                 allocation=args.allocation, max_samples=args.max_samples, budget=args.budget)
    except (ValueError, TypeError, OSError) as exc:
        print(f"sekron compress: error: {exc}", file=sys.stderr)
        return 2
    torch.save(small.state_dict(), args.output)
    if args.onnx:
        assert shape is not None
        write_onnx(small, args.onnx, shape)
    if args.report:
        data: dict[str, Any] = {"rows": list(report), "totals": report.totals}
        Path(args.report).write_text(json.dumps(data, indent=1))
    if not args.quiet:
        print(report)
        print(f"wrote {args.output}: load it with sekron.torch.load_compressed(<dense model>, torch.load(path))")
        if args.onnx:
            print(f"wrote {args.onnx}: the compressed model as plain convolutions, for onnxruntime")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(compress_main())
