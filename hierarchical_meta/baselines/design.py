"""The design of the linear baselines: polynomial terms of each numeric x, the metadata and their
cross-level interactions, named in lme4's formula notation.

At degree d, the design's x holds the schema's linear x entries (each categorical column in
treatment coding, :meth:`~hierarchical_meta.tasks.schema.TabularSchema.linear_columns`) and
then the powers x_c², …, x_c^d of each numeric column c (of its standardized values); its
metadata are the linear metadata entries (none with ``use_metadata=False``). The fixed-effect
features (:func:`linear_features`) add every *numeric term* (x_c^p, p = 1..d) times every
metadata entry::

    f(x, m) = [1, x, m, x_i m_j for each numeric term i and metadata entry j]

For ChickWeight at degree 2 that is ``weight ~ (Time + I(Time^2)) * Diet``; a mixed model adds
random effects of an intercept and chosen numeric terms, ``(1 + Time | Chick)``
(:meth:`PolynomialDesign.formula`). On standardized x the powers span the same functions as
the powers of the user's x, so the fits are those of the formulas on the user's columns;
:meth:`PolynomialDesign.user_basis` rewrites coefficients on those columns.
"""

from __future__ import annotations

import dataclasses

import torch

from ..tasks.base import TaskBatch
from ..tasks.schema import TabularSchema

__all__ = ["MAX_DEGREE", "PolynomialDesign", "linear_features"]

#: The highest polynomial degree of the linear baselines.
MAX_DEGREE = 3
_CONVERSION_POINTS = 8  # random points per feature that fix the change to user units


def linear_features(x: torch.Tensor, metadata: torch.Tensor, interactions) -> torch.Tensor:
    """``[1, x, m, x_i m_j for (i, j) in interactions]``: x [T, N, Dx], metadata [T, Dm] -> [T, N, P]."""
    m = metadata[:, None, :].expand(-1, x.shape[1], -1)  # [T, N, Dm]
    products = [(x[..., i] * m[..., j])[..., None] for i, j in interactions]
    return torch.cat([x.new_ones(x.shape[:-1] + (1,)), x, m.to(x.dtype)] + products, -1)


def _term_name(column: str, power: int) -> str:
    return column if power == 1 else f"I({column}^{power})"


def _sum(names: list[str]) -> str:
    """``a + b`` in parentheses when there are several."""
    return names[0] if len(names) == 1 else f"({' + '.join(names)})"


class PolynomialDesign:
    """The linear baselines' design of a schema's tasks at ``degree`` (see the module docstring).

    Attributes: ``numeric`` (the numeric x columns), ``terms`` (their (column, power) pairs,
    column by column), ``x_names`` and ``metadata_names`` (one per design entry, for
    :class:`~hierarchical_meta.baselines.MixedModel`), ``interactions`` (every numeric term
    with every metadata entry, as (x entry, metadata entry) pairs).
    """

    def __init__(self, schema: TabularSchema, degree: int = 1, use_metadata: bool = True):
        if degree not in range(1, MAX_DEGREE + 1):
            raise ValueError(f"degree must be 1 to {MAX_DEGREE}, got {degree!r}")
        self.schema, self.degree, self.use_metadata = schema, degree, use_metadata
        self._x_columns = schema.linear_columns("x")
        self._m_columns = schema.linear_columns("metadata") if use_metadata else []
        names = schema.encoded_names("x")
        linear = [names[i] for i in self._x_columns]
        self.numeric = [c.name for c in schema.x if c.kind == "numeric"]
        self._linear_position = {name: linear.index(name) for name in self.numeric}
        self.terms = [(c, p) for c in self.numeric for p in range(1, degree + 1)]
        self.x_names = linear + [_term_name(c, p) for c, p in self.terms if p > 1]
        self.metadata_names = [schema.encoded_names("metadata")[j] for j in self._m_columns]
        self.interactions = [(self.position(term), j) for term in self.terms for j in range(len(self._m_columns))]

    def position(self, term: tuple[str, int]) -> int:
        """The design x entry of a numeric term (column, power)."""
        return self.x_names.index(_term_name(*term)) if term[1] > 1 else self._linear_position[term[0]]

    # -- data -------------------------------------------------------------------------------

    def expand(self, x: torch.Tensor, metadata: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoded x [T, N, Dx] and metadata [T, Dm] (the schema's) -> the design's x and metadata."""
        linear = x[..., self._x_columns]
        powers = [linear[..., self._linear_position[c]: self._linear_position[c] + 1] ** p
                  for c, p in self.terms if p > 1]
        return torch.cat([linear] + powers, -1), metadata[:, self._m_columns]

    def batch(self, batch: TaskBatch) -> TaskBatch:
        """The batch with the design's x and metadata (support and query)."""
        x_support, metadata = self.expand(batch.x_support, batch.metadata)
        x_query, _ = self.expand(batch.x_query, batch.metadata)
        return dataclasses.replace(batch, x_support=x_support, x_query=x_query, metadata=metadata)

    # -- random slopes ----------------------------------------------------------------------

    def slope_ladder(self) -> list[list[tuple[str, int]]]:
        """The random slopes to try, richest first: every numeric term of power <= p for
        p = degree..1, then the first n numeric columns' linear terms for fewer n, down to none
        (a random intercept alone)."""
        ladder = [[(c, q) for c, q in self.terms if q <= p] for p in range(self.degree, 0, -1)]
        ladder += [[(c, 1) for c in self.numeric[:n]] for n in range(len(self.numeric) - 1, -1, -1)]
        return [slopes for i, slopes in enumerate(ladder) if slopes not in ladder[:i]]

    # -- formulas ---------------------------------------------------------------------------

    def fixed_formula(self) -> str:
        """The fixed part in lme4 notation: ``(Time + I(Time^2)) * Diet``."""
        numeric = [_term_name(c, p) for c, p in self.terms]
        categorical = [c.name for c in self.schema.x if c.kind == "categorical"]
        metadata = [c.name for c in self.schema.metadata] if self.use_metadata else []
        if numeric and metadata:
            main = [f"{_sum(numeric)} * {_sum(metadata)}"]
        else:
            main = numeric + metadata
        return " + ".join(main + categorical)

    def random_part(self, slopes: list[tuple[str, int]]) -> str:
        """The random part with ``slopes`` (numeric terms; [] for an intercept alone): ``(1 + Time | Chick)``."""
        return f"({' + '.join(['1'] + [_term_name(*term) for term in slopes])} | {self.schema.group})"

    def formula(self, slopes: list[tuple[str, int]] | None = None) -> str:
        """``y ~ fixed``, and ``+ random part`` with ``slopes``."""
        text = f"{self.schema.y[0].name} ~ {self.fixed_formula()}"
        return text if slopes is None else f"{text} + {self.random_part(slopes)}"

    # -- user units -------------------------------------------------------------------------

    def _encoded_scale(self, role: str) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
        """Mean and sd per encoded entry of a role (0 and 1 for one-hot entries) and the entries of
        each categorical column."""
        means, stds, categorical, start = [], [], [], 0
        for c in self.schema.columns(role):
            means += [c.mean if c.kind == "numeric" else 0.0] * c.width
            stds += [c.std if c.kind == "numeric" else 1.0] * c.width
            if c.kind == "categorical":
                categorical.append(list(range(start, start + c.width)))
            start += c.width
        return torch.tensor(means, dtype=torch.float64), torch.tensor(stds, dtype=torch.float64), categorical

    def _random_inputs(self, role: str, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """n random encoded inputs in user units (numeric entries uniform in [-1, 1], one level of
        each categorical column) and the same inputs standardized: [n, D] each."""
        mean, std, categorical = self._encoded_scale(role)
        raw = 2 * torch.rand(n, len(mean), generator=generator, dtype=torch.float64) - 1
        for entries in categorical:
            raw[:, entries] = 0.0
            raw[torch.arange(n), torch.tensor(entries)[torch.randint(len(entries), (n,), generator=generator)]] = 1.0
        return raw, (raw - mean) / std

    def user_basis(self, features, width: int) -> torch.Tensor:
        """M [W, W] with features(standardized inputs) = features(user-unit inputs) @ M.

        ``features`` maps the design's x [n, 1, Dx] and metadata [n, Dm] to [n, 1, W]. The
        relation is exact (each feature is a polynomial of the inputs): M is solved from
        random inputs. A coefficient vector c on the standardized features is M c on the
        user's; a covariance C is M C Mᵀ.
        """
        generator = torch.Generator().manual_seed(0)
        n = _CONVERSION_POINTS * width
        x_raw, x_std = self._random_inputs("x", n, generator)
        m_raw, m_std = self._random_inputs("metadata", n, generator)
        raw = features(*self.expand(x_raw[:, None, :], m_raw))[:, 0]  # [n, W]
        std = features(*self.expand(x_std[:, None, :], m_std))[:, 0]
        return torch.linalg.lstsq(raw, std).solution
