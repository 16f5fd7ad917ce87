"""The ``sekron`` command line: decompose, info, reconstruct, demo."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .structure import PATTERNS


def _parse_structure(text: str) -> list[tuple[int, ...]]:
    try:
        grid = [tuple(int(s) for s in part.strip().lower().split("x")) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--structure must look like 16x16x3x1,16x16x1x3 (factor shapes joined by commas), got {text!r}"
        ) from None
    return grid


def _parse_rank(text: str) -> int | list[int]:
    try:
        parts = [int(p) for p in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--rank must be an int or a comma list of ints, got {text!r}") from None
    return parts[0] if len(parts) == 1 else parts


def check_output(path: str, flag: str = "-o") -> str:
    """Refuse, before any work, an output path that is a directory or whose directory does not exist."""
    target = Path(path)
    if target.is_dir():
        raise ValueError(f"{flag} {path!r} is a directory; give a file name inside it, e.g. {str(target / 'out')!r}")
    parent = target.parent
    if not parent.is_dir():
        raise ValueError(f"{flag} {path!r}: the directory {str(parent)!r} does not exist; create it first")
    return path


def _load_npy(path: str) -> np.ndarray:
    """One array from a ``.npy`` file, with a clear message for anything else."""
    with open(path, "rb") as fh:
        head = fh.read(6)
    if head.startswith(b"PK"):
        raise ValueError(f"{path!r} is a zip archive (.npz), not a .npy file; decompose reads one array saved with "
                         "numpy.save (for a sekron .npz use 'sekron info')")
    if head != b"\x93NUMPY":
        raise ValueError(f"{path!r} is not a .npy file (no NumPy header); save the array with numpy.save")
    W = np.load(path, allow_pickle=False)
    if not isinstance(W, np.ndarray):  # pragma: no cover - np.load of a .npy is always an array
        raise ValueError(f"{path!r} holds no array")
    return W


def _cmd_decompose(args: argparse.Namespace) -> int:
    from . import Structure, decompose, save

    check_output(args.output)
    W = _load_npy(args.input)
    st = Structure(args.structure, args.pattern)
    sk, err = decompose(W, st, rank=args.rank, tol=args.tol, svd=args.svd, random_state=args.seed,
                        return_error=True)
    save(args.output, sk)
    print(f"wrote {args.output}: ranks {sk.rank}, {sk.n_params} parameters "
          f"({math.prod(W.shape) / sk.n_params:.2f}x fewer than {math.prod(W.shape)}), relative error {err:.3e}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from . import load

    sk = load(args.input)
    print(repr(sk))
    print(repr(sk.structure))
    return 0


def _cmd_reconstruct(args: argparse.Namespace) -> int:
    from . import load

    # numpy.save appends .npy to a name without it: name the file that is really written
    output = args.output if args.output.endswith(".npy") else args.output + ".npy"
    check_output(args.output)
    check_output(output)
    sk = load(args.input)
    W = np.asarray(sk.to_tensor())
    np.save(output, W)
    print(f"wrote {output}: shape {W.shape}, dtype {W.dtype}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from ._demo import real_weights_demo, run, run_demo

    if args.data == "pines":
        print(run_demo(compression=args.compression, show_progress=not args.quiet))
    elif args.data == "ddddocr":
        print(real_weights_demo(n_layers=args.layers, ratio=args.compression, show_progress=not args.quiet))
    else:
        print(run(show_progress=not args.quiet))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``sekron`` command."""
    parser = argparse.ArgumentParser(prog="sekron", description="SeKron tensor decomposition")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("decompose", help="decompose a .npy tensor and save it as .npz")
    p.add_argument("input", help="input tensor (.npy)")
    p.add_argument("--structure", required=True, type=_parse_structure,
                   help="factor shapes, e.g. 16x16x3x1,16x16x1x3")
    p.add_argument("--pattern", default="nested", choices=PATTERNS)
    p.add_argument("--rank", type=_parse_rank, default=None, help="rank cap: an int or one int per bond")
    p.add_argument("--tol", type=float, default=None, help="relative error target in (0, 1)")
    p.add_argument("--svd", default="auto", help="SVD variant: auto, full, gram, randomized")
    p.add_argument("--seed", type=int, default=0, help="random seed (randomized SVD, cp)")
    p.add_argument("-o", "--output", required=True, help="output file (.npz)")
    p.set_defaults(func=_cmd_decompose)

    p = sub.add_parser("info", help="describe a saved SeKron tensor")
    p.add_argument("input")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("reconstruct", help="rebuild the full tensor and save it as .npy")
    p.add_argument("input")
    p.add_argument("-o", "--output", required=True, help="output file (.npy is appended when missing)")
    p.set_defaults(func=_cmd_reconstruct)

    sub.add_parser("compress", help="compress a PyTorch model (needs torch): sekron compress --help",
                   add_help=False)

    p = sub.add_parser("demo", help="SeKron against TT, TR, CP and Tucker on real conv weights; prints a table")
    p.add_argument("--data", choices=["auto", "ddddocr", "pines"], default="auto",
                   help="ddddocr's conv weights (default when installed) or tensorly's Indian Pines cube")
    p.add_argument("--compression", type=float, default=8.0, help="parameter reduction factor (default 8)")
    p.add_argument("--layers", type=int, default=5, help="number of ddddocr layers (default 5)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sekron`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "compress":  # torch is imported only for this command
        from .torch.cli import compress_main

        return int(compress_main(argv[1:]))
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status: Any = args.func(args)
    except (ValueError, TypeError, OSError) as exc:
        print(f"sekron {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return int(status)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
