"""compress(structures=K): the structure at each measured size is chosen by output error, not weight error."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from sekron.structure import Structure  # noqa: E402
from sekron.structure_search._scoring import _family  # noqa: E402
from sekron.torch import compress  # noqa: E402
from sekron.torch._allocate import Frontier  # noqa: E402
from sekron.torch._sensitivity import _alternatives, _interpolated  # noqa: E402


def _fams() -> list:
    st = Structure.cp((4, 4))
    a = _family(st, "spectrum", [4, 8, 12], [0.5, 0.3, 0.1], [[1], [2], [3]])
    b = _family(st, "spectrum", [5, 9], [0.45, 0.2], [[1], [2]])
    c = _family(st, "spectrum", [3, 20], [0.9, 0.0], [[1], [4]])
    return [a, b, c]


def test_alternatives_and_interpolation() -> None:
    fams = _fams()
    f = Frontier.from_families(fams, 16)
    i = int(np.flatnonzero(f.params == 12)[0])
    alts = _alternatives(f, i, fams, 3)
    ident = [(next(k for k, g in enumerate(fams) if g is fam), j) for fam, j in alts]
    assert ident[0] == (0, 2)  # the weight-error choice first (family a, 12 params)
    assert ident[1:] == [(1, 1), (2, 0)]  # others within 12 params, best first
    assert all(int(fam.params[j]) <= 12 for fam, j in alts)
    assert len(_alternatives(f, i, fams, 1)) == 1
    # another bond pattern is tried before a second structure of a pattern already taken
    chain = _family(Structure.tt((4, 4)), "spectrum", [6], [0.95], [[1]])
    alts = _alternatives(f, i, [*fams, chain], 2)
    assert alts[1][0] is chain
    assert [a[0] for a in _alternatives(f, i, [*fams, chain], 4)][1:] == [chain, fams[1], fams[2]]
    # a measured alternative enters with its own size; unmeasured points are interpolated, dominated ones dropped
    g = _interpolated(f, [(9, 0.01, (fams[1], 1)), (3, 0.5, f.refs[0])])
    assert 9 in g.params.tolist() and g.refs[-1] is None and g.err2[-1] == 0
    assert np.all(np.diff(g.params) > 0) and np.all(np.diff(g.err2) < 0)


def test_compress_structures_never_worse_for_one_layer() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1))
    x = torch.randn(16, 8, 6, 6, generator=torch.Generator().manual_seed(1))
    # inputs with a strongly non-white covariance, where output and weight error disagree
    x = torch.einsum("nchw,cd->ndhw", x, torch.diag(torch.logspace(0, -2, 8)))
    kw = {"calibration": x, "skip_first": False, "min_kernel_size": 1, "progress": False, "n_jobs": 1}
    one, r1 = compress(net, 4, **kw)
    three, r3 = compress(net, 4, structures=4, **kw)
    with pytest.raises(ValueError, match="structures must be"):
        compress(net, 4, structures=0, **kw)
    for rep in (r1, r3):
        assert rep.totals["ratio"] >= 4
    # one layer whose output is the network output: the damage is the layer's output error at the same inputs
    with torch.no_grad():
        e1 = float((one(x) - net(x)).norm() / net(x).norm())
        e3 = float((three(x) - net(x)).norm() / net(x).norm())
    assert e3 <= e1 * 1.02 + 1e-6
