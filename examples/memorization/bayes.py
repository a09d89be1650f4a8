"""The hierarchical Bayesian model as a predict function for the probe.

:class:`BayesianModelPredictor` is the model's importance-weighted posterior predictive
p(y_q | support, m) (:func:`hierarchical_meta.predict.posterior_predictive`), or with the
metadata withheld (fed as missing, NaN, which the model is trained to read): a
``MixturePredictive`` for regression, a ``CategoricalMixturePredictive`` (class
probabilities Σ_s w_s softmax f(x_q, φ2_s)) for a model with the categorical likelihood.
Each call reseeds its sampler, so the probe's conditions share random numbers.
"""

from __future__ import annotations

import torch

from hierarchical_meta.predict import posterior_predictive

__all__ = ["BayesianModelPredictor"]


class BayesianModelPredictor:
    """p(y_q | x_q, support, m) of a trained :class:`~hierarchical_meta.HierarchicalMetaModel`.

    ``num_samples`` importance samples, a share ``defensive`` of them from the prior
    (:func:`~hierarchical_meta.predict.posterior_predictive`); pinned here so that the
    probe's numbers do not move with the library's defaults.
    """

    def __init__(self, meta_model, num_samples: int = 256, withhold_metadata: bool = False, seed: int = 0,
                 defensive: float = 0.1):
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.meta_model, self.num_samples, self.defensive = meta_model, num_samples, defensive
        self.withhold_metadata, self.seed = withhold_metadata, seed

    def __call__(self, x_support, y_support, x_query, support_mask=None, metadata=None):
        T = x_query.shape[0]
        dm = self.meta_model.config.metadata_dim
        if metadata is None or self.withhold_metadata:
            metadata = torch.full((T, dm), float("nan"))
        metadata = self.meta_model.model_metadata(metadata)
        if support_mask is None:
            support_mask = torch.ones(x_support.shape[:2], dtype=torch.bool)
        # posterior_predictive, not meta_model.predict: the probe passes tensors, with no y_query for a TaskBatch
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            predictive, _ = posterior_predictive(self.meta_model.model, self.meta_model.guide, x_support,
                                                 y_support, metadata, support_mask, x_query,
                                                 num_samples=self.num_samples, defensive=self.defensive)
        return predictive
