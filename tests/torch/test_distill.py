"""distill's label-free regularisers: augmentation, held-out epoch choice, feature matching."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from sekron.torch import distill  # noqa: E402
from sekron.torch.distillation import _augmented  # noqa: E402


def _pair() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4))
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return teacher, student


def _gap(student: nn.Module, teacher: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((student(x) - teacher(x)).pow(2).mean())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shift_matches_dense_translation(dtype: torch.dtype) -> None:
    x = torch.randn(6, 2, 5, 7, dtype=dtype)
    gen = torch.Generator().manual_seed(3)
    got = _augmented(x, 2, 0.0, 0.0, gen)
    offsets = torch.randint(-2, 3, (6, 2), generator=torch.Generator().manual_seed(3))
    for i in range(6):  # reference: zero-padded roll, one sample at a time
        ref = torch.zeros_like(x[i])
        pad = torch.nn.functional.pad(x[i], (2, 2, 2, 2))
        dy, dx = int(offsets[i, 0]), int(offsets[i, 1])
        ref = pad[:, 2 - dy:2 - dy + 5, 2 - dx:2 - dx + 7]
        torch.testing.assert_close(got[i], ref, rtol=0, atol=0)
    assert got.dtype == dtype


def test_mixup_and_noise_are_convex_and_scaled() -> None:
    x = torch.rand(64, 1, 4, 4)
    keep = x.clone()
    mixed = _augmented(x, 0, 0.0, 0.4, torch.Generator().manual_seed(0))
    torch.testing.assert_close(x, keep, rtol=0, atol=0)  # input never written to
    assert float(mixed.min()) >= 0.0 and float(mixed.max()) <= 1.0 and not torch.equal(mixed, x)
    noisy = _augmented(x, 0, 0.5, 0.0, torch.Generator().manual_seed(0))
    assert 0.4 < float((noisy - x).std()) < 0.6


def test_distill_options_deterministic_and_close_the_gap() -> None:
    teacher, student = _pair()
    x = torch.randn(48, 2, 6, 6, generator=torch.Generator().manual_seed(1))
    before = _gap(student, teacher, x)
    kw = {"epochs": 6, "lr": 3e-3, "batch_size": 16, "progress": False, "shift": 1, "noise": 0.05, "mixup": 0.4,
          "holdout": 0.25, "features": ["1"], "schedule": "cosine"}
    rng = torch.get_rng_state()
    a = distill(copy.deepcopy(student), teacher, x, **kw)
    b = distill(copy.deepcopy(student), teacher, x, **kw)
    torch.testing.assert_close(torch.get_rng_state(), rng)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert _gap(a, teacher, x) < 0.8 * before


def test_holdout_never_ends_worse_than_start() -> None:
    teacher, student = _pair()
    x = torch.randn(32, 2, 6, 6, generator=torch.Generator().manual_seed(2))
    # a learning rate that wrecks the student: the held-out choice must return the start
    start = copy.deepcopy(student)
    got = distill(copy.deepcopy(student), teacher, x, epochs=3, lr=10.0, holdout=0.5, progress=False, seed=1)
    held = x[torch.randperm(32, generator=torch.Generator().manual_seed(1))[:16]]
    assert _gap(got, teacher, held) <= _gap(start, teacher, held) + 1e-12
    # batches (DataLoader-like) work with holdout too
    got = distill(copy.deepcopy(student), teacher, [(x[:16], None), (x[16:], None)], epochs=2, lr=1e-3,
                  holdout=0.25, progress=False)
    assert isinstance(got, nn.Module)


def test_feature_matching_pulls_the_feature() -> None:
    teacher, student = _pair()
    x = torch.randn(32, 2, 6, 6, generator=torch.Generator().manual_seed(4))

    def feat(m: nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return m[:2](x)

    before = float((feat(student) - feat(teacher)).pow(2).mean())
    got = distill(copy.deepcopy(student), teacher, x, epochs=10, lr=3e-3, features=["1"], feature_weight=10.0,
                  progress=False)
    assert float((feat(got) - feat(teacher)).pow(2).mean()) < 0.8 * before


def test_distill_bad_options() -> None:
    teacher, student = _pair()
    x = torch.randn(8, 2, 6, 6)
    for kw, match in [({"shift": -1}, "shift must be"), ({"shift": 1.5}, "shift must be"),
                      ({"noise": -0.1}, "noise must be"), ({"mixup": float("nan")}, "mixup must be"),
                      ({"holdout": 1.0}, "holdout must be"), ({"holdout": -0.1}, "holdout must be"),
                      ({"features": ["nope"]}, "not a submodule"),
                      ({"feature_weight": float("inf")}, "feature_weight"), ({"schedule": "step"}, "schedule must")]:
        with pytest.raises(ValueError, match=match):
            distill(student, teacher, x, progress=False, **kw)
    with pytest.raises(ValueError, match="spatial axes"):
        distill(nn.Linear(3, 2), nn.Linear(3, 2), torch.randn(4, 3), shift=1, progress=False)
    with pytest.raises(ValueError, match="at least 2 inputs"):
        distill(student, teacher, x[:1], holdout=0.5, progress=False)


def _params_close(a: nn.Module, b: nn.Module, tol: float) -> None:
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("holdout", [0.0, 0.25])
@pytest.mark.parametrize("as_batches", [False, True])
def test_cache_teacher_matches_running_the_teacher(dtype: torch.dtype, holdout: float, as_batches: bool) -> None:
    teacher, student = _pair()
    teacher, student = teacher.to(dtype), student.to(dtype)
    x = torch.randn(40, 2, 6, 6, generator=torch.Generator().manual_seed(5), dtype=dtype)
    data = [(x[i:i + 10], None) for i in range(0, 40, 10)] if as_batches else x
    kw = {"epochs": 3, "lr": 3e-3, "batch_size": 8, "progress": False, "holdout": holdout, "features": ["1"],
          "schedule": "cosine", "seed": 2}
    ref = distill(copy.deepcopy(student), teacher, data, **kw)
    seen: list[int] = []  # the inputs the teacher sees: each once with the cache
    handle = teacher.register_forward_hook(lambda m, a, o: seen.append(len(a[0])))
    try:
        got = distill(copy.deepcopy(student), teacher, data, cache_teacher=True, **kw)
    finally:
        handle.remove()
    assert sum(seen) == len(x)
    _params_close(got, ref, 1e-4 if dtype == torch.float32 else 1e-10)
    assert _gap(got, teacher, x) < _gap(student, teacher, x)


@settings(max_examples=8, deadline=None)
@given(batch_size=st.integers(1, 12), holdout=st.sampled_from([0.0, 0.2, 0.5]), seed=st.integers(0, 2 ** 16),
       epochs=st.integers(0, 2))
def test_cache_teacher_property(batch_size: int, holdout: float, seed: int, epochs: int) -> None:
    """Whatever the batching, holdout and seed: the cached teacher trains the same student (float64)."""
    teacher, student = _pair()
    teacher, student = teacher.double(), student.double()
    x = torch.randn(12, 2, 5, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    kw = {"epochs": epochs, "lr": 1e-2, "batch_size": batch_size, "progress": False, "holdout": holdout,
          "seed": seed}
    ref = distill(copy.deepcopy(student), teacher, x, **kw)
    got = distill(copy.deepcopy(student), teacher, x, cache_teacher=True, **kw)
    _params_close(got, ref, 1e-10)


def test_on_epoch_reports_the_held_out_loss() -> None:
    teacher, student = _pair()
    x = torch.randn(32, 2, 6, 6, generator=torch.Generator().manual_seed(6))
    held = x[torch.randperm(32, generator=torch.Generator().manual_seed(3))[:8]]
    model = copy.deepcopy(student)
    seen: list[tuple[int, float | None, float]] = []

    def log(epoch: int, loss: float | None) -> None:
        seen.append((epoch, loss, _gap(model, teacher, held)))  # reference: the held-out MSE written out

    got = distill(model, teacher, x, epochs=4, lr=1e-2, holdout=0.25, seed=3, cache_teacher=True, on_epoch=log,
                  progress=False)
    assert [e for e, _, _ in seen] == [0, 1, 2, 3, 4]
    for _, loss, ref in seen:
        assert loss is not None and loss == pytest.approx(ref, rel=1e-5)
    # the student ends at the best of the start and the epochs on the held-out inputs
    assert seen[0][2] == pytest.approx(_gap(student, teacher, held), rel=1e-6)
    assert _gap(got, teacher, held) == pytest.approx(min(r for _, _, r in seen), rel=1e-5)
    calls: list[float | None] = []
    distill(copy.deepcopy(student), teacher, x, epochs=2, progress=False, on_epoch=lambda e, h: calls.append(h))
    assert calls == [None, None, None]


def test_cache_teacher_bad_options() -> None:
    teacher, student = _pair()
    x = torch.randn(8, 2, 6, 6)
    for kw in ({"shift": 1}, {"noise": 0.1}, {"mixup": 0.2}):
        with pytest.raises(ValueError, match="cache_teacher=True"):
            distill(student, teacher, x, cache_teacher=True, progress=False, **kw)
    with pytest.raises(TypeError, match="on_epoch must be callable"):
        distill(student, teacher, x, on_epoch=3, progress=False)  # type: ignore[arg-type]
