"""run_tasks (order, in-process and pool results equal) and the progress bars, without torch."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pytest

from sekron import _parallel, _progress


def _norm(a: np.ndarray, scale: float) -> float:
    return float(np.linalg.norm(a)) * scale


def test_results_keep_task_order_whatever_the_submission_order() -> None:
    rng = np.random.default_rng(0)
    tasks = [(rng.standard_normal(n), 2.0) for n in (3, 50, 7)]
    want = [_norm(*t) for t in tasks]
    assert _parallel.run_tasks(_norm, tasks, n_jobs=1, sizes=[3, 50, 7]) == want
    assert _parallel.run_tasks(_norm, tasks, n_jobs=2, sizes=[3, 50, 7]) == want


def test_large_arrays_are_scattered_to_a_dask_cluster() -> None:
    distributed = pytest.importorskip("distributed")
    big = np.arange(_parallel.SCATTER_BYTES // 8 + 10, dtype=np.float64)
    small = np.ones(4)
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
        calls: list[int] = []
        scatter = client.scatter

        def counting(data: Any, **kwargs: Any) -> Any:
            calls.append(int(data.nbytes))
            return scatter(data, **kwargs)

        client.scatter = counting  # type: ignore[method-assign]
        out = _parallel.run_tasks(_norm, [(big, 1.0), (small, 3.0)], client=client)
    assert out == [_norm(big, 1.0), _norm(small, 3.0)]
    assert calls == [big.nbytes]  # only the array above SCATTER_BYTES left the task


def test_text_bar_without_tqdm(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm now raises ImportError
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    assert list(_progress.progress(range(3), desc="work")) == [0, 1, 2]
    err = capsys.readouterr().err
    assert "work 3/3" in err and "ETA 0s" in err
    assert _parallel.run_tasks(divmod, [(7, 2), (9, 4)], n_jobs=1, progress=True, desc="tasks") == [(3, 1), (2, 1)]
    assert "tasks 2/2" in capsys.readouterr().err


def test_disabled_bar_writes_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    assert list(_progress.progress(iter("ab"), enabled=False)) == ["a", "b"]
    assert _parallel.run_tasks(divmod, [(7, 2)], n_jobs=1, progress=False) == [(3, 1)]
    assert capsys.readouterr().err == ""
