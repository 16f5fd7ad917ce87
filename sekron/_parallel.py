"""Per-layer work in parallel: worker processes on this machine, or a dask cluster.

:func:`run_tasks` calls one picklable function on a list of argument tuples and returns
the results in the order of the tuples, whatever order the workers finish in. The
engines are the standard ones; nothing here schedules:

- ``concurrent.futures.ProcessPoolExecutor`` with ``n_jobs`` workers (all cores for
  ``-1``), each with one BLAS thread (the search pins it), largest tasks submitted first;
- a ``dask.distributed`` client: the one passed, or the active one
  (``distributed.get_client()``, only looked for when ``distributed`` is already
  imported; a cluster is never started here).

Start method of the worker processes: ``fork`` on Linux (like torch's DataLoader; the
workers run numpy only, never torch, so torch's thread pools are not used after the
fork, and a script needs no ``if __name__ == "__main__"`` guard), ``spawn`` elsewhere.
The environment variable ``SEKRON_START_METHOD`` (``fork``, ``forkserver`` or
``spawn``) overrides it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ._progress import bar as progress_bar

#: worker start method by default (see the module docstring)
DEFAULT_START_METHOD = "fork" if sys.platform.startswith("linux") else "spawn"
#: arrays above this size are scattered to a dask cluster instead of travelling inside the task
#: (dask warns about task graphs with large embedded data from about 1 MB on)
SCATTER_BYTES = 1 << 20


def cpu_count() -> int:
    """Cores this process may use (its affinity mask when the platform has one).

    Examples
    --------
    >>> cpu_count() >= 1
    True
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))  # type: ignore[attr-defined,unused-ignore]
    except (AttributeError, OSError):  # pragma: no cover - platforms without affinity
        return max(1, os.cpu_count() or 1)


def resolve_jobs(n_jobs: Any) -> int:
    """Worker count for ``n_jobs``: a positive int as it is; ``-1`` all cores, ``-2`` all but one, ...

    Examples
    --------
    >>> resolve_jobs(3)
    3
    >>> resolve_jobs(-1) == cpu_count()
    True
    """
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs == 0:
        raise ValueError(f"n_jobs must be a nonzero int (1: no worker processes, -1: all cores), got {n_jobs!r}")
    return n_jobs if n_jobs > 0 else max(1, cpu_count() + 1 + n_jobs)


def active_client(client: Any = None) -> Any:
    """The dask client to use: ``client`` when given, else the active one, else None.

    ``client=False`` means none, even when one is active. ``distributed`` is never imported
    here unless the caller already imported it (then a client may be active).
    """
    if client is False:
        return None
    if client is not None:
        if not hasattr(client, "submit") or not hasattr(client, "gather"):
            raise TypeError(f"client must be a dask.distributed.Client (or False), got {type(client).__name__}")
        return client
    if "distributed" not in sys.modules:
        return None
    try:
        from distributed import get_client

        return get_client()
    except (ValueError, ImportError):  # no client is active
        return None


def start_method() -> str:
    """The worker start method (``SEKRON_START_METHOD`` or :data:`DEFAULT_START_METHOD`)."""
    method = os.environ.get("SEKRON_START_METHOD", DEFAULT_START_METHOD)
    import multiprocessing

    if method not in multiprocessing.get_all_start_methods():
        raise ValueError(f"SEKRON_START_METHOD must be one of {multiprocessing.get_all_start_methods()}, "
                         f"got {method!r}")
    return method


def run_tasks(fn: Callable[..., Any], tasks: Sequence[tuple[Any, ...]], *, n_jobs: int = -1, client: Any = None,
              sizes: Sequence[float] | None = None, progress: bool = False, desc: str = "") -> list[Any]:
    """``[fn(*t) for t in tasks]``, run by a dask client, worker processes, or in this process.

    Parameters
    ----------
    fn : callable
        A module-level function (picklable by reference).
    tasks : sequence of tuple
        Positional arguments, plain values and numpy arrays.
    n_jobs : int
        Worker processes when no dask client is used (:func:`resolve_jobs`); 1 runs here, and
        so does any value inside a daemonic process (e.g. a pool or dask worker).
    client : dask.distributed.Client, False or None
        See :func:`active_client`.
    sizes : sequence of float, optional
        Expected cost of each task; the largest are submitted first.
    progress : bool
        A tqdm bar (with its ETA) over the finished tasks.

    Returns
    -------
    list
        One result per task, in the order of ``tasks``.

    Examples
    --------
    >>> run_tasks(divmod, [(7, 2), (9, 4)], n_jobs=1)
    [(3, 1), (2, 1)]
    """
    jobs = resolve_jobs(n_jobs)
    n = len(tasks)
    order = sorted(range(n), key=lambda i: -sizes[i]) if sizes is not None else list(range(n))
    results: list[Any] = [None] * n
    dask = active_client(client)
    bar = progress_bar(n, desc, progress)
    try:
        if dask is not None:
            from distributed import as_completed

            futures = {dask.submit(fn, *_scattered(dask, tasks[i]), pure=False): i for i in order}
            for fut in as_completed(list(futures)):
                results[futures[fut]] = fut.result()
                bar.update(1)
        elif jobs == 1 or n <= 1 or _daemonic():
            for i in range(n):
                results[i] = fn(*tasks[i])
                bar.update(1)
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor
            from concurrent.futures import as_completed as done

            ctx = multiprocessing.get_context(start_method())
            with ProcessPoolExecutor(max_workers=min(jobs, n), mp_context=ctx) as pool:
                futs = {pool.submit(fn, *tasks[i]): i for i in order}
                try:
                    for fut in done(futs):
                        results[futs[fut]] = fut.result()
                        bar.update(1)
                except BaseException:
                    for fut in futs:
                        fut.cancel()
                    raise
    finally:
        bar.close()
    return results


def _daemonic() -> bool:
    """True inside a daemonic process (a pool or dask worker), which may not start processes: run there."""
    import multiprocessing

    return bool(multiprocessing.current_process().daemon)


def _scattered(client: Any, args: tuple[Any, ...]) -> list[Any]:
    """``args`` with every array of more than :data:`SCATTER_BYTES` sent to the cluster first.

    dask's advice for large inputs: a future in place of the array keeps it out of the
    task graph (which the scheduler holds and forwards), and the worker gets it directly.
    """
    return [client.scatter(a, direct=False) if getattr(a, "nbytes", 0) > SCATTER_BYTES else a for a in args]
