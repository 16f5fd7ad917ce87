"""Sensitivity on a torch.fx GraphModule recomputes only the graph downstream of the swapped layer, same numbers."""

from __future__ import annotations

import importlib

import pytest

torch = pytest.importorskip("torch")
from torch import fx, nn  # noqa: E402

from sekron.torch import compress  # noqa: E402

sens = importlib.import_module("sekron.torch._sensitivity")


class Branchy(nn.Module):
    """A skip connection, a concat of two branches and a head: downstream sets of every size."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.a = nn.Conv2d(16, 24, 3, padding=1)
        self.b = nn.Conv2d(24, 16, 3, padding=1)
        self.c = nn.Conv2d(16, 16, 3, padding=1)
        self.d = nn.Conv2d(32, 24, 3, padding=1)
        self.head = nn.Conv2d(24, 24, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.relu(self.stem(x))
        t = torch.relu(self.b(torch.relu(self.a(s)))) + s
        u = torch.cat([t, torch.sigmoid(self.c(s))], 1)
        return self.head(torch.relu(self.d(u)))[:, :20]


class InPlace(nn.Module):
    """A residual add in place on the main path (``out.add_(shortcut)``; fx traces ``+=`` as an out-of-place add):
    with the shortcut conv swapped, ``out`` is a cached value that a replay must not change."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.main = nn.Conv2d(16, 16, 3, padding=1)
        self.shortcut = nn.Conv2d(16, 16, 1)
        self.head = nn.Conv2d(16, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.relu(self.stem(x))
        out = self.main(s)
        return self.head(torch.relu(out.add_(self.shortcut(s))))


class Twice(nn.Module):
    """The same conv called twice: the replay cannot tell which call to swap and falls back to full passes."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.shared = nn.Conv2d(16, 16, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shared(torch.relu(self.shared(self.stem(x))))


def _graph(model: type[nn.Module], dtype: torch.dtype) -> fx.GraphModule:
    torch.manual_seed(0)
    return fx.symbolic_trace(model().to(dtype).eval())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_replay_equals_a_full_pass_for_every_layer(dtype: torch.dtype) -> None:
    gm = _graph(Branchy, dtype)
    batches = [torch.randn(2, 3, 8, 8, dtype=dtype, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    replay = sens._Replay.of(gm, batches)
    assert replay is not None
    for name in ("stem", "a", "b", "c", "d", "head"):
        dense = gm.get_submodule(name)
        assert replay.prepare(name)
        other = nn.Conv2d(dense.in_channels, dense.out_channels, 3, padding=1).to(dtype)
        gm.set_submodule(name, other)
        with torch.no_grad():
            full = [gm(x) for x in batches]
        got = replay.outputs()
        gm.set_submodule(name, dense)
        assert all(torch.equal(a, b) for a, b in zip(full, got)), name
    assert replay.partial_passes == replay.full_passes == 12


def test_replay_of_an_in_place_residual_leaves_its_cache_intact() -> None:
    gm = _graph(InPlace, torch.float32)
    batches = [torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(5))]
    replay = sens._Replay.of(gm, batches)
    assert replay is not None and replay.prepare("shortcut")
    dense = gm.get_submodule("shortcut")
    for seed in range(3):  # several swaps in a row, as the ladder does
        torch.manual_seed(seed)
        gm.set_submodule("shortcut", nn.Conv2d(16, 16, 1))
        with torch.no_grad():
            full = gm(batches[0])
        assert torch.equal(replay.outputs()[0], full)
    gm.set_submodule("shortcut", dense)
    with torch.no_grad():
        assert torch.equal(replay.outputs()[0], gm(batches[0]))


def test_a_module_called_twice_is_not_replayed() -> None:
    gm = _graph(Twice, torch.float32)
    replay = sens._Replay.of(gm, [torch.zeros(1, 3, 8, 8)])
    assert replay is not None and not replay.prepare("shared") and replay.prepare("stem")
    assert sens._Replay.of(Twice(), [torch.zeros(1, 3, 8, 8)]) is None  # not a GraphModule: full passes


@pytest.mark.parametrize("model", [Branchy, Twice])
def test_compress_sensitivity_is_the_same_with_and_without_replay(model: type[nn.Module],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    runs = []
    for replay in (False, True):
        monkeypatch.setattr(sens, "REPLAY", replay)
        calls = {"full": 0}
        outputs = sens._outputs

        def counting(m: nn.Module, b: list[torch.Tensor], calls: dict[str, int] = calls,
                     outputs: object = outputs) -> list[torch.Tensor]:
            calls["full"] += 1
            return outputs(m, b)  # type: ignore[operator]

        monkeypatch.setattr(sens, "_outputs", counting)
        small, rep = compress(_graph(model, torch.float32), 2.0, calibration=x, allocation="sensitivity",
                              objective="weight", progress=False, n_jobs=1, batch_size=2, min_kernel_size=0,
                              skip_first=False)
        monkeypatch.setattr(sens, "_outputs", outputs)
        with torch.no_grad():
            runs.append((small(x), [(r["name"], r["status"], r.get("sensitivity")) for r in rep], calls["full"]))
    (y0, rows0, full0), (y1, rows1, full1) = runs
    assert rows0 == rows1 and torch.equal(y0, y1)
    assert any(s for _, _, s in rows1)  # some layer was measured
    if model is Branchy:
        assert full1 == 1 < full0  # only the reference pass is a full forward
    else:
        assert full1 > 1  # the shared conv is measured with full passes
