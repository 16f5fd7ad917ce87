"""Structure search: the SeKron structures, bond patterns and ranks that best meet a budget.

- :mod:`sekron.structure_search._search`: :func:`search`, :class:`Candidate`, the search space and
  the ranking;
- :mod:`sekron.structure_search._scoring`: exact errors of whole rank families from one spectrum;
- :mod:`sekron.structure_search._baselines`: TT / TR / Tucker rank profiles and their exact scores;
- :mod:`sekron.structure_search._grouped`: structures whose factors own whole modes;
- :mod:`sekron.structure_search._cache`: :class:`SearchCache`, per-weight search state reused across calls;
- :mod:`sekron.structure_search._layer`: one layer's work for :func:`sekron.torch.compress` (plain data in and out).

``sekron.search`` is the function :func:`search` itself; the import path ``from sekron.search
import ...`` still resolves to this package.
"""

from ._cache import SearchCache, default_cache
from ._search import BASELINES, OBJECTIVES, Candidate, candidate_macs, families, param_budget, search

__all__ = ["BASELINES", "OBJECTIVES", "Candidate", "SearchCache", "candidate_macs", "default_cache", "families",
           "param_budget", "search"]
