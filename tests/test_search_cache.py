"""Search cache and per-layer tasks: a warm cache (memory or disk) gives exactly what a cold search gives."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from search_helpers import assert_same_families, decaying_kernel

from sekron._parallel import resolve_jobs, run_tasks
from sekron.structure_search import families
from sekron.structure_search._cache import SearchCache, weight_hash
from sekron.structure_search._layer import (
    family_from_plain,
    family_to_plain,
    ladder,
    layer_families,
    layer_task,
)

RNG = np.random.default_rng(3)
W = decaying_kernel(RNG, (8, 6, 3, 3))


def test_weight_hash_content_dtype_shape() -> None:
    assert weight_hash(W) == weight_hash(W.copy())
    assert weight_hash(W) != weight_hash(W.astype(np.float32))
    assert weight_hash(W) != weight_hash(W.reshape(6, 8, 3, 3))
    V = W.copy()
    V[0, 0, 0, 0] += 1e-12
    assert weight_hash(W) != weight_hash(V)
    assert weight_hash(np.asfortranarray(W)) == weight_hash(W)  # content, not memory layout


@pytest.mark.parametrize("method", ["sekron", "tucker"])
def test_warm_cache_at_another_ratio_equals_cold(method: str) -> None:
    cache = SearchCache()
    with cache.using(W):
        layer_families(W, W.size / 4, method)
    cold_hits, misses = cache.hits, cache.misses
    assert misses > 0
    with cache.using(W):
        warm = layer_families(W, W.size / 6, method)
    assert cache.hits - cold_hits > 0  # the second ratio reuses spectra / ALS / rank-capped fits
    cold = layer_families(W, W.size / 6, method)  # no cache at all
    assert_same_families(warm, cold)


def test_disk_cache_is_npz_and_json_and_reused(tmp_path) -> None:
    first = SearchCache(tmp_path)
    with first.using(W):
        cold = layer_families(W, W.size / 5, "sekron")
    folder = tmp_path / weight_hash(W)
    index = json.loads((folder / "index.json").read_text())
    files = sorted(p.name for p in folder.iterdir())
    assert files == sorted(["index.json", *index["entries"].values()])
    assert all(f.endswith(".npz") for f in index["entries"].values())
    for name in index["entries"].values():  # loadable without pickle
        with np.load(folder / name, allow_pickle=False) as data:
            assert all(data[k].dtype != object for k in data.files)
    second = SearchCache(tmp_path)  # a fresh process would start like this
    with second.using(W):
        warm = layer_families(W, W.size / 5, "sekron")
    # every lookup hits; a cp fit's own lookup of its start (cpstart) happens only when the fit is computed
    assert second.misses == 0 and 0 < second.hits <= first.hits + first.misses
    assert_same_families(warm, cold)


def test_memory_bound_evicts_least_recent_weight() -> None:
    cache = SearchCache(max_bytes=1)
    other = decaying_kernel(RNG, (6, 4, 3, 3))
    for A in (W, other):
        with cache.using(A):
            families(A, A.size / 3, (2,), ("nested",), ())
    assert cache.entries(weight_hash(W)) == {}
    assert cache.entries(weight_hash(other))  # the latest weight is always kept


def test_family_plain_roundtrip() -> None:
    fams = layer_families(W, W.size / 4, "sekron")
    assert any(f.kind == "als" for f in fams)
    back = [family_from_plain(family_to_plain(f)) for f in fams]
    assert_same_families(back, fams)


def test_layer_task_in_workers_equals_here() -> None:
    tasks = [(W, W.size / 4, "sekron", weight_hash(W), {}), (W[:4], W[:4].size / 3, "cp", weight_hash(W[:4]), {})]
    here = run_tasks(layer_task, tasks, n_jobs=1)
    there = run_tasks(layer_task, tasks, n_jobs=2, sizes=[1, 2])
    for (pa, na, ha, ma), (pb, nb, hb, mb) in zip(here, there):
        assert_same_families([family_from_plain(p) for p in pa], [family_from_plain(p) for p in pb])
        assert na.keys() == nb.keys() and (ha, ma) == (hb, mb)


@pytest.mark.parametrize("bad", [0, 1.5, True, "2", None])
def test_bad_n_jobs(bad: object) -> None:
    with pytest.raises(ValueError, match="n_jobs"):
        resolve_jobs(bad)


def test_bad_cache_arguments(tmp_path) -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        SearchCache(max_bytes=-1)
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="directory"):
        SearchCache(tmp_path / "f")


@given(size=st.integers(16, 10**6), frac=st.floats(0.01, 1.0))
def test_ladder_anchored_on_octaves(size: int, frac: float) -> None:
    budget = frac * size
    steps = ladder(size, budget)
    anchor = steps[2] if steps[2] < size else None
    if anchor is not None:
        assert abs(math.log2(anchor / budget)) <= 0.5 + 1e-9  # within half an octave of the share
        assert math.log2(anchor / size) == round(math.log2(anchor / size))  # a power of two times the size
    half = ladder(size, budget / 2)
    if steps[0] / 2 >= 1 and budget / 2 >= 1:
        assert len(set(steps) & set(half)) >= 3  # twice the ratio: at least 3 of the 5 budgets are shared


def _in_daemon(q) -> None:  # a pool worker cannot start processes: run_tasks runs in place there
    q.put(run_tasks(divmod, [(7, 2), (9, 4)], n_jobs=2))


def test_run_tasks_inside_a_daemonic_process() -> None:
    import multiprocessing

    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("needs the fork start method (the target is defined in a test module)")
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    proc = ctx.Process(target=_in_daemon, args=(q,), daemon=True)
    proc.start()
    got = q.get(timeout=60)
    proc.join(timeout=60)
    assert got == [(3, 1), (2, 1)]


def test_unaligned_weight_gives_theassert_same_families() -> None:
    """dask hands tasks views into its receive buffers; numpy's non-BLAS loops on them round differently."""
    W = decaying_kernel(RNG, (24, 12, 3, 3))
    raw = np.empty(W.nbytes + 8, dtype=np.uint8)
    U = raw[3:3 + W.nbytes].view(np.float64).reshape(W.shape)
    U[...] = W
    assert not U.flags.aligned
    here, _, _, _ = layer_task(W, W.size / 4, "sekron", weight_hash(W), {})
    there, _, _, _ = layer_task(U, W.size / 4, "sekron", weight_hash(W), {})
    assert_same_families([family_from_plain(p) for p in there], [family_from_plain(p) for p in here])


def test_damaged_disk_cache_is_recomputed(tmp_path) -> None:
    first = SearchCache(tmp_path)
    with first.using(W):
        cold = layer_families(W, W.size / 5, "sekron")
    folder = tmp_path / weight_hash(W)
    index = json.loads((folder / "index.json").read_text())
    names = sorted(index["entries"].values())
    (folder / names[0]).write_bytes(b"not an npz")  # a truncated file
    key = next(iter(index["entries"]))
    index["entries"][key] = "../../outside.npz"  # an index pointing elsewhere is ignored
    (folder / "index.json").write_text(json.dumps(index))
    second = SearchCache(tmp_path)
    with second.using(W):
        warm = layer_families(W, W.size / 5, "sekron")
    assert 0 < second.misses <= 2 and second.hits > 0
    assert_same_families(warm, cold)
