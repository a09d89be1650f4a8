"""A small grouped data set with a known hierarchy, in the shape users bring their own.

Sites are groups; each has an altitude (m) and a region (group-level metadata, one numeric
and one categorical column) and a random number of rows (``min_rows``..``max_rows``) of a
dose and its response. The site's line depends on its metadata plus random effects::

    a_t = 20 + 0.004 (altitude_t - 1200) + α[region_t] + u_t,     u_t ~ N(0, 1.5²)
    b_t = 1.2 - 0.0005 (altitude_t - 1200) + β[region_t] + v_t,   v_t ~ N(0, 0.25²)
    response_tn = a_t + b_t dose_tn + ε_tn,                        ε_tn ~ N(0, 1)

with α = (north -2, south 2, east 0), β = (north 0.3, south -0.3, east 0),
altitude ~ U(200, 2200) and dose ~ U(0, 10). :func:`grouped_frame` gives the data set
(columns site, dose, response, altitude, region); :func:`new_sites_frame` new sites as a
prediction file (task, role, dose, response, altitude, region). Both are seeded.
``examples/make_sample_data.py`` writes the copies under ``examples/data/``.
"""

from __future__ import annotations

import math

import torch

from .frames import import_pandas

__all__ = ["REGIONS", "grouped_frame", "new_sites_frame"]

REGIONS = ("north", "south", "east")
_ALPHA = torch.tensor([-2.0, 2.0, 0.0], dtype=torch.float64)
_BETA = torch.tensor([0.3, -0.3, 0.0], dtype=torch.float64)


def _sites(num_sites: int, sizes: torch.Tensor, g: torch.Generator) -> dict:
    """Metadata, lines and rows of ``num_sites`` sites with ``sizes`` [S] rows each (float64)."""
    f64 = dict(dtype=torch.float64)
    altitude = (200 + 2000 * torch.rand(num_sites, generator=g, **f64)).round(decimals=-1)  # [S]
    region = torch.randint(len(REGIONS), (num_sites,), generator=g)  # [S]
    a = 20 + 0.004 * (altitude - 1200) + _ALPHA[region] + 1.5 * torch.randn(num_sites, generator=g, **f64)
    b = 1.2 - 0.0005 * (altitude - 1200) + _BETA[region] + 0.25 * torch.randn(num_sites, generator=g, **f64)
    site = torch.repeat_interleave(torch.arange(num_sites), sizes)  # [R]
    dose = (10 * torch.rand(len(site), generator=g, **f64)).round(decimals=2)
    response = a[site] + b[site] * dose + torch.randn(len(site), generator=g, **f64)
    return {"site": site, "dose": dose, "response": response.round(decimals=3),
            "altitude": altitude[site], "region": [REGIONS[r] for r in region[site].tolist()]}


def grouped_frame(num_groups: int = 60, min_rows: int = 5, max_rows: int = 30, seed: int = 0):
    """The data set: ``num_groups`` sites ``s001``, ``s002``, … of ``min_rows``..``max_rows`` rows."""
    if num_groups < 1 or not 1 <= min_rows <= max_rows:
        raise ValueError(f"need num_groups >= 1 and 1 <= min_rows <= max_rows, got {num_groups}, "
                         f"{min_rows}, {max_rows}")
    pandas = import_pandas()
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(min_rows, max_rows + 1, (num_groups,), generator=g)
    data = _sites(num_groups, sizes, g)
    digits = max(3, len(str(num_groups)))
    data["site"] = [f"s{i + 1:0{digits}d}" for i in data["site"].tolist()]
    return pandas.DataFrame({k: (v.tolist() if torch.is_tensor(v) else v) for k, v in data.items()})


def new_sites_frame(num_support=(0, 3, 8), num_query: int = 5, seed: int = 1):
    """New sites ``new1``, … as a prediction file: ``num_support[i]`` support rows (with the
    response) and ``num_query`` query rows (without) for site i. The last site's altitude
    is left empty (missing metadata)."""
    pandas = import_pandas()
    g = torch.Generator().manual_seed(seed)
    sizes = torch.tensor(num_support) + num_query
    frame = pandas.DataFrame({k: (v.tolist() if torch.is_tensor(v) else v)
                              for k, v in _sites(len(sizes), sizes, g).items()})
    frame.insert(0, "task", [f"new{i + 1}" for i in frame.pop("site")])
    rank = frame.groupby("task").cumcount()
    support = rank < frame["task"].map(dict(zip(frame["task"].unique(), num_support, strict=True)))
    frame.insert(1, "role", ["support" if s else "query" for s in support])
    frame.loc[~support, "response"] = math.nan
    frame.loc[frame["task"] == f"new{len(sizes)}", "altitude"] = math.nan
    return frame
