"""The textbook memorization scenarios as task families (Yin et al., ICLR 2020, §3-§6).

Each family follows :class:`~hierarchical_meta.tasks.base.TaskFamily`. Split vocabulary:
``"train"`` and ``"val"`` tasks come from the meta-training distribution (for families
with a finite set of training tasks: the same tasks, fresh points), ``"test"`` tasks
from the meta-test distribution, which may differ. Every :meth:`sample` draws from the
split's own stream (:func:`~hierarchical_meta.tasks.base.split_generator`), so the same
caller's seed gives different points in each split; a finite set of training tasks is
drawn from the ``"train"`` stream of the family's ``seed``, so no meta-test stream can
replay it. None of these scenarios has task metadata: ``metadata`` is one zero column
([T, 1]); the basis scenario keeps the basis family's noisy view of the weights.

Classification families declare ``num_classes`` and store class indices in ``y``
([T, N, 1]); regression families implement ``true_mean(params, x)`` (the noise-free
truth the probe's follow score needs) and declare ``noise_std``.

1. ``basis``: basis-function regression, 10 support / 10 query (one distribution, no
   memorization possible: the weights are continuous and invisible in x).
2. ``disease-shared`` / ``disease-disjoint``: disease (label 1) vs healthy (label 0);
   meta-train diseases and held-out meta-test diseases, which share a common
   abnormality signature with the training ones, or share none.
3. ``grasp``: reward for an action given 5 rewarded trials; the object's identity is
   visible in a "monitor" channel at meta-train and blanked (zeros) at meta-test.
4. ``mutually-exclusive``: the disease tasks with the label meaning shuffled per task.
5. ``basis-task-id``: a finite set of basis-function tasks with a one-hot task
   identifier appended to x; meta-test tasks are new weights carrying the identifier of
   the nearest training task (a coarse bin, as in the paper's regression variant).

Each :class:`Scenario` names its family, its support and query sizes and its oracle
(:mod:`hierarchical_meta.memorization.oracles`): the closed-form learner that adapts by
construction.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from hierarchical_meta.memorization import (
    BayesianLinearRegression,
    GaussianClassMeans,
    GoalGridPosterior,
    basis_posterior_predictor,
)
from hierarchical_meta.tasks.base import TaskBatch, TaskFamily, split_generator
from hierarchical_meta.tasks.basis import BasisFunctionTasks

__all__ = ["DiseaseTasks", "GraspTasks", "TaskIdBasisTasks", "Scenario", "SCENARIOS",
           "make_scenario", "task_id_oracle", "grasp_oracle", "class_means_oracle"]


def _balanced_labels(T: int, N: int, generator: torch.Generator) -> torch.Tensor:
    """[T, N] labels with floor(N/2) ones per task, in random order."""
    return (torch.rand(T, N, generator=generator).argsort(-1) < N // 2).long()


class DiseaseTasks(TaskFamily):
    """Binary disease-vs-healthy classification; label 1 means "diseased" (unless shuffled).

    Features x ∈ R^d, d = 1 + train_dims + test_dims, coordinate 0 the common abnormality
    signature c. Healthy: x ~ N(0, I). Disease k: x ~ N(μ_k, I) with::

        training disease k:   μ_k = a_c c + a_u u_k,   u_k a unit vector in the train subspace
        held-out, shared:     μ_k = a_c c + a_u u_k,   u_k in the test subspace
        held-out, disjoint:   μ_k = sqrt(a_c² + a_u²) u_k  (no c, same |μ_k|)

    so with ``shared_signature=False`` the held-out diseases share no direction with the
    training ones. The train and test subspaces are disjoint coordinates, so a held-out
    disease never equals a training one, for any seed. Each task is one disease against
    healthy samples, half of each in the support and in the query. ``shuffle_labels=True``
    swaps the label meaning in a random half of the tasks (mutually exclusive tasks: no
    support-free classifier beats chance).
    """

    name = "disease"
    x_dim = 11
    y_dim = 1
    metadata_dim = 1
    num_classes = 2

    def __init__(self, *, shared_signature: bool = True, shuffle_labels: bool = False,
                 num_train_diseases: int = 8, num_test_diseases: int = 8, train_dims: int = 5,
                 test_dims: int = 5, common_shift: float = 1.5, specific_shift: float = 2.5,
                 seed: int = 0):
        if num_train_diseases < 1 or num_test_diseases < 1 or train_dims < 1 or test_dims < 1:
            raise ValueError("numbers of diseases and subspace dimensions must be >= 1")
        if common_shift < 0 or specific_shift <= 0:
            raise ValueError(f"need common_shift >= 0 and specific_shift > 0, got "
                             f"{common_shift} and {specific_shift}")
        self.shared_signature = shared_signature
        self.shuffle_labels = shuffle_labels
        self.x_dim = 1 + train_dims + test_dims
        g = torch.Generator().manual_seed(seed)

        def directions(k, lo, hi):  # k unit vectors supported on coordinates [lo, hi)
            u = torch.zeros(k, self.x_dim)
            u[:, lo:hi] = torch.randn(k, hi - lo, generator=g)
            return u / u.norm(dim=-1, keepdim=True)

        c = torch.zeros(self.x_dim)
        c[0] = 1.0
        self.signature = c
        self.train_means = common_shift * c + specific_shift * directions(num_train_diseases, 1, 1 + train_dims)
        u_test = directions(num_test_diseases, 1 + train_dims, self.x_dim)
        if shared_signature:
            self.test_means = common_shift * c + specific_shift * u_test
        else:
            self.test_means = (common_shift ** 2 + specific_shift ** 2) ** 0.5 * u_test

    def sample(self, num_tasks: int, num_support: int, num_query: int, *,
               split: str = "train", generator: torch.Generator | None = None) -> TaskBatch:
        self.check_sizes(num_tasks, num_support, num_query, split)
        g, T = split_generator(split, generator), num_tasks
        means = self.test_means if split == "test" else self.train_means
        disease = torch.randint(len(means), (T,), generator=g)
        labels = torch.cat([_balanced_labels(T, num_support, g), _balanced_labels(T, num_query, g)], 1)
        x = torch.randn(T, num_support + num_query, self.x_dim, generator=g) \
            + labels[..., None] * means[disease][:, None, :]  # [T, N, d]
        flip = (torch.rand(T, generator=g) < 0.5).long() if self.shuffle_labels else torch.zeros(T).long()
        y = (labels ^ flip[:, None]).float()[..., None]  # [T, N, 1]
        K = num_support
        return TaskBatch(x_support=x[:, :K], y_support=y[:, :K], x_query=x[:, K:], y_query=y[:, K:],
                         metadata=torch.zeros(T, 1),
                         params={"disease": disease, "disease_mean": means[disease], "flip": flip})


class GraspTasks(TaskFamily):
    """A grasping analog: predict the reward of an action from a few rewarded trials.

    Each object has a hidden grasp point g ∈ [0, 1]; an action a ∈ [0, 1] earns::

        r = exp(-(a - g)² / (2 ℓ²)) + ε,   ε ~ N(0, noise_std²)

    Input x = (a, monitor) with monitor ∈ R^E the object's appearance (a fixed random
    vector per object). Meta-training uses a finite set of objects with visible monitor
    (drawn from the ``"train"`` stream of ``seed``); meta-test objects are new
    (g ~ U[goal_range], from the ``"test"`` stream) and the monitor is blanked (zeros), so
    only the trials in the support tell the goal.
    """

    name = "grasp"
    y_dim = 1
    metadata_dim = 1

    def __init__(self, *, num_train_objects: int = 16, monitor_dim: int = 4, width: float = 0.12,
                 noise_std: float = 0.05, goal_range=(0.1, 0.9), seed: int = 0):
        if num_train_objects < 1 or monitor_dim < 1:
            raise ValueError("num_train_objects and monitor_dim must be >= 1")
        if width <= 0 or noise_std <= 0 or not goal_range[0] < goal_range[1]:
            raise ValueError("width and noise_std must be > 0 and goal_range (low, high) with low < high")
        self.x_dim = 1 + monitor_dim
        self.width, self.noise_std, self.goal_range = float(width), float(noise_std), tuple(goal_range)
        g = split_generator("train", torch.Generator().manual_seed(seed))
        lo, hi = self.goal_range
        self.train_goals = lo + (hi - lo) * torch.rand(num_train_objects, generator=g)
        self.train_monitors = torch.randn(num_train_objects, monitor_dim, generator=g)

    def reward(self, action: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        """Noise-free reward: action [T, N, 1], goal [T] (or broadcastable) -> [T, N, 1]."""
        return torch.exp(-0.5 * ((action - goal[..., None, None]) / self.width) ** 2)

    def true_mean(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """The noise-free reward of each task's goal at the actions x[..., 0]: [T, Q, Dx] -> [T, Q, 1]."""
        return self.reward(x[..., :1], params["goal"])

    def sample(self, num_tasks: int, num_support: int, num_query: int, *,
               split: str = "train", generator: torch.Generator | None = None) -> TaskBatch:
        self.check_sizes(num_tasks, num_support, num_query, split)
        g, T, N = split_generator(split, generator), num_tasks, num_support + num_query
        if split == "test":
            lo, hi = self.goal_range
            goal = lo + (hi - lo) * torch.rand(T, generator=g)
            monitor = torch.zeros(T, self.x_dim - 1)
            obj = torch.full((T,), -1)
        else:
            obj = torch.randint(len(self.train_goals), (T,), generator=g)
            goal, monitor = self.train_goals[obj], self.train_monitors[obj]
        action = torch.rand(T, N, 1, generator=g)
        x = torch.cat([action, monitor[:, None, :].expand(T, N, -1)], -1)
        y = self.reward(action, goal) + self.noise_std * torch.randn(T, N, 1, generator=g)
        K = num_support
        return TaskBatch(x_support=x[:, :K], y_support=y[:, :K], x_query=x[:, K:], y_query=y[:, K:],
                         metadata=torch.zeros(T, 1), params={"goal": goal, "object": obj})


class TaskIdBasisTasks(TaskFamily):
    """Basis-function regression with a one-hot task identifier appended to x.

    Meta-training tasks are a finite set of weight vectors w_1..w_N ~ N(0, σ_w² I) (drawn
    from the ``"train"`` stream of ``seed``); x = (u, onehot(k)) with u ~ U[0, 1] and
    y = Σ_i w_k,i φ_i(u) + ε. Meta-test tasks draw fresh w ~ N(0, σ_w² I) (from the
    ``"test"`` stream) and carry the identifier of the nearest training task, so the
    identifier bins the task space coarsely, as in Yin et al.'s regression variant.
    """

    name = "basis-task-id"
    y_dim = 1
    metadata_dim = 1

    def __init__(self, *, num_train_tasks: int = 16, num_basis: int = 5, weight_std: float = 1.0,
                 noise_std: float = 0.1, seed: int = 0):
        if num_train_tasks < 1:
            raise ValueError(f"num_train_tasks must be >= 1, got {num_train_tasks}")
        self.basis = BasisFunctionTasks(num_basis=num_basis, num_observed_weights=0,
                                        weight_std=weight_std, noise_std=noise_std)
        self.noise_std, self.weight_std = float(noise_std), float(weight_std)
        self.x_dim = 1 + num_train_tasks
        g = split_generator("train", torch.Generator().manual_seed(seed))
        self.train_weights = weight_std * torch.randn(num_train_tasks, num_basis, generator=g)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Basis features of the input's first coordinate: x [..., Dx] -> [..., B]."""
        return self.basis.features(x[..., :1])

    def true_mean(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Σ_i w_i φ_i(u) per task: x [T, Q, Dx] -> [T, Q, 1]."""
        return self.features(x) @ params["weights"][:, :, None]

    def sample(self, num_tasks: int, num_support: int, num_query: int, *,
               split: str = "train", generator: torch.Generator | None = None) -> TaskBatch:
        self.check_sizes(num_tasks, num_support, num_query, split)
        g, T, N = split_generator(split, generator), num_tasks, num_support + num_query
        if split == "test":
            w = self.weight_std * torch.randn(T, self.train_weights.shape[1], generator=g)
            ident = torch.cdist(w, self.train_weights).argmin(-1)
        else:
            ident = torch.randint(len(self.train_weights), (T,), generator=g)
            w = self.train_weights[ident]
        u = torch.rand(T, N, 1, generator=g)
        onehot = torch.nn.functional.one_hot(ident, self.x_dim - 1).float()
        x = torch.cat([u, onehot[:, None, :].expand(T, N, -1)], -1)
        y = self.basis.features(u) @ w[:, :, None] + self.noise_std * torch.randn(T, N, 1, generator=g)
        K = num_support
        return TaskBatch(x_support=x[:, :K], y_support=y[:, :K], x_query=x[:, K:], y_query=y[:, K:],
                         metadata=torch.zeros(T, 1), params={"weights": w, "identifier": ident})


@dataclasses.dataclass(frozen=True)
class Scenario:
    """A named scenario: its task family, support/query sizes, oracle and a one-line description.

    ``make_family(seed=...)`` builds the task family; ``make_oracle(family)`` the closed-form
    learner that adapts by construction, a predict function in the probe's convention
    (the study's ``oracle`` rows).
    """

    name: str
    make_family: Callable[..., TaskFamily]
    num_support: int
    num_query: int
    make_oracle: Callable[[TaskFamily], Callable]
    description: str


def task_id_oracle(family: TaskIdBasisTasks) -> BayesianLinearRegression:
    """Bayesian linear regression on the basis features of u, ignoring the identifier."""
    return BayesianLinearRegression(family.features, family.weight_std, family.noise_std)


def grasp_oracle(family: GraspTasks) -> GoalGridPosterior:
    """The exact posterior over the goal on a grid; reads the action channel only."""
    return GoalGridPosterior(family.reward, family.goal_range, family.noise_std)


def class_means_oracle(family: DiseaseTasks) -> GaussianClassMeans:
    """Bayes classification with Gaussian classes whose means are learnt from the support."""
    return GaussianClassMeans(num_classes=family.num_classes)


#: The scenarios by name (``--scenario NAME``).
SCENARIOS: dict[str, Scenario] = {s.name: s for s in [
    Scenario("basis", lambda seed=0: BasisFunctionTasks(), 10, 10, basis_posterior_predictor,
             "basis-function regression, weights w ~ N(0, I), one distribution"),
    Scenario("basis-task-id", lambda seed=0: TaskIdBasisTasks(seed=seed), 10, 10, task_id_oracle,
             "16 fixed basis tasks with a one-hot task identifier in x; new tasks at meta-test"),
    Scenario("disease-shared", lambda seed=0: DiseaseTasks(shared_signature=True, seed=seed), 10, 10,
             class_means_oracle, "disease (1) vs healthy (0); held-out diseases share the common signature"),
    Scenario("disease-disjoint", lambda seed=0: DiseaseTasks(shared_signature=False, seed=seed), 10, 10,
             class_means_oracle, "disease (1) vs healthy (0); held-out diseases share no signature"),
    Scenario("grasp", lambda seed=0: GraspTasks(seed=seed), 5, 20, grasp_oracle,
             "reward from 5 trials; object identity on a monitor at meta-train, blanked at meta-test"),
    Scenario("mutually-exclusive", lambda seed=0: DiseaseTasks(shuffle_labels=True, seed=seed), 10, 10,
             class_means_oracle, "disease tasks with the label meaning shuffled per task (control)"),
]}


def make_scenario(name: str) -> Scenario:
    """The scenario registered under ``name``; ``ValueError`` lists the known ones."""
    if name not in SCENARIOS:
        raise ValueError(f"unknown memorization scenario {name!r}; choose one of {sorted(SCENARIOS)}")
    return SCENARIOS[name]
