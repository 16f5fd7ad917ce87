"""compress in parallel: one process, two processes and a 2-worker dask LocalCluster give the same model;
a second compress at another ratio hits the cache and equals a cold run."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from sekron.structure_search._cache import SearchCache  # noqa: E402
from sekron.torch import compress  # noqa: E402


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 12, 3), nn.ReLU(), nn.Conv2d(12, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3),
                         nn.Flatten(), nn.Linear(16, 24))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return bool(a == b)


def _models_equal(a: nn.Module, b: nn.Module) -> bool:
    return [type(m).__name__ for m in a.modules()] == [type(m).__name__ for m in b.modules()] and _same(
        a.state_dict(), b.state_dict())


@pytest.fixture(scope="module")
def serial() -> tuple[nn.Module, Any]:
    return compress(_net(), 3, progress=False, n_jobs=1, cache=False, min_kernel_size=256)


def test_two_processes_equal_one(serial: tuple[nn.Module, Any]) -> None:
    model, report = compress(_net(), 3, progress=False, n_jobs=2, cache=False, min_kernel_size=256)
    assert report.totals["layers_compressed"] >= 2
    assert _models_equal(model, serial[0])
    assert list(report) == list(serial[1])
    x = torch.randn(2, 3, 7, 7)
    assert torch.equal(model(x), serial[0](x))


def test_dask_local_cluster_equals_one_process(serial: tuple[nn.Module, Any]) -> None:
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  memory_limit=0) as cluster, distributed.Client(cluster) as client:
        passed, _ = compress(_net(), 3, progress=False, cache=False, client=client, min_kernel_size=256)
        active, _ = compress(_net(), 3, progress=False, cache=False, min_kernel_size=256)  # the active client
    assert _models_equal(passed, serial[0])
    assert _models_equal(active, serial[0])


def test_second_ratio_hits_cache_and_equals_cold() -> None:
    cache = SearchCache()
    _, first = compress(_net(), 3, progress=False, n_jobs=1, cache=cache, min_kernel_size=256)
    assert first.totals["cache_misses"] > 0
    warm, second = compress(_net(), 5, progress=False, n_jobs=2, cache=cache, min_kernel_size=256)
    assert second.totals["cache_hits"] > second.totals["cache_misses"]
    assert cache.hits == first.totals["cache_hits"] + second.totals["cache_hits"]
    cold, report = compress(_net(), 5, progress=False, n_jobs=1, cache=False, min_kernel_size=256)
    assert second.totals["cache_hits"] > report.totals["cache_hits"]  # cold: only repeats within the run
    assert _models_equal(warm, cold)
    assert list(second) == list(report)


def test_same_octave_reuses_whole_layer_results() -> None:
    cache = SearchCache()
    _, first = compress(_net(), 4, progress=False, n_jobs=1, cache=cache, min_kernel_size=256)
    assert first.totals["cache_layers_reused"] == 0
    warm, second = compress(_net(), 4.05, progress=False, n_jobs=1, cache=cache, min_kernel_size=256)
    eligible = sum(1 for r in second if not r["status"].startswith("skipped"))
    assert second.totals["cache_layers_reused"] == eligible > 0  # no task ran: same octave, same weights
    assert second.totals["cache_misses"] == 0
    cold, report = compress(_net(), 4.05, progress=False, n_jobs=1, cache=False, min_kernel_size=256)
    assert report.totals["cache_layers_reused"] == 0
    assert _models_equal(warm, cold)
    assert list(second) == list(report)


@pytest.mark.parametrize("second", [8, 2])
def test_an_octave_away_equals_cold_with_fewer_misses(second: int) -> None:
    cache = SearchCache()
    compress(_net(), 4, progress=False, n_jobs=1, cache=cache, min_kernel_size=256)
    warm, report = compress(_net(), second, progress=False, n_jobs=1, cache=cache, min_kernel_size=256)
    assert report.totals["cache_layers_reused"] == 0  # another octave: the searches ran, from the cache
    cold, cold_report = compress(_net(), second, progress=False, n_jobs=1, cache=False, min_kernel_size=256)
    assert _models_equal(warm, cold)
    assert list(report) == list(cold_report)
    assert report.totals["cache_hits"] > 0 and report.totals["cache_misses"] < cold_report.totals["cache_misses"]


def test_disk_cache_survives_a_new_cache_object(tmp_path) -> None:
    _, first = compress(_net(), 4, progress=False, n_jobs=1, cache=SearchCache(tmp_path), min_kernel_size=256)
    assert first.totals["cache_misses"] > 0
    again, second = compress(_net(), 4, progress=False, n_jobs=1, cache=SearchCache(tmp_path),
                             min_kernel_size=256)
    assert second.totals["cache_misses"] == 0 and second.totals["cache_hits"] > 0
    cold, _ = compress(_net(), 4, progress=False, n_jobs=1, cache=False, min_kernel_size=256)
    assert _models_equal(again, cold)


@pytest.mark.parametrize(("kwargs", "err", "match"), [
    ({"n_jobs": 0}, ValueError, "n_jobs"),
    ({"n_jobs": 2.0}, ValueError, "n_jobs"),
    ({"cache": "yes"}, TypeError, "cache"),
    ({"cache": False, "cache_dir": "x"}, ValueError, "cache_dir"),
    ({"client": object()}, TypeError, "client"),
])
def test_bad_parallel_arguments(kwargs: dict[str, Any], err: type, match: str) -> None:
    with pytest.raises(err, match=match):
        compress(_net(), 3, progress=False, min_kernel_size=256, **kwargs)


def test_cli_jobs_and_cache_dir(tmp_path) -> None:
    from sekron.torch.cli import compress_main

    arch = tmp_path / "arch.py"
    arch.write_text("import torch\ndef build():\n    torch.manual_seed(0)\n    return torch.nn.Sequential("
                    "torch.nn.Conv2d(3, 12, 3), torch.nn.Conv2d(12, 16, 3))\n")
    ns: dict[str, Any] = {}
    exec(arch.read_text(), ns)
    src = tmp_path / "m.pt"
    torch.save(ns["build"]().state_dict(), src)
    args = [str(src), "--ratio", "3", "--arch", f"{arch}:build", "--min-kernel-size", "100", "--quiet",
            "--jobs", "1", "--cache-dir", str(tmp_path / "cache")]
    assert compress_main([*args, "-o", str(tmp_path / "a.pt")]) == 0
    assert list((tmp_path / "cache").glob("*/index.json")) and list((tmp_path / "cache").glob("*/*.npz"))
    assert compress_main([*args, "-o", str(tmp_path / "b.pt")]) == 0
    a, b = torch.load(tmp_path / "a.pt", weights_only=True), torch.load(tmp_path / "b.pt", weights_only=True)
    assert _same(a, b)
