"""The checkpoint file (hierarchical_meta/checkpoint.py) and what fit stores in it.

- a Checkpoint written and read back has the same fields (tensors bit for bit), and a
  model-only one is not resumable;
- the sha256 of a field changes with any value, type, order or dtype in it, and not otherwise;
- writing refuses anything but plain data, and never leaves a partial file;
- fit's checkpoint holds its training state, which a resume takes over;
- the resume conflicts of ``checkpoint_extra`` name each differing option with both values.
Bad files and their messages: tests/test_bad_input_checkpoint.py.
"""

import dataclasses
import os

import pytest
import torch

from hierarchical_meta.checkpoint import FORMAT, HISTORY_KEYS, RNG_STATE_SIZE, VERSION, Checkpoint, digest
from hierarchical_meta.meta_model import HierarchicalMetaModel, ModelConfig, load_checkpoint
from hierarchical_meta.tasks import SinusoidTasks
from hierarchical_meta.train import OTHER_DATA, TrainConfig, data_sized, extra_conflicts, fit

MODEL = ModelConfig(hidden=4, latent_dim=2, layers=1)


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return HierarchicalMetaModel(MODEL)


def test_a_model_checkpoint_round_trips_and_is_not_resumable(tmp_path):
    model = tiny_model()
    model.save(str(tmp_path / "model.pt"))
    loaded, checkpoint = load_checkpoint(str(tmp_path / "model.pt"))
    assert checkpoint.model_config == dataclasses.asdict(MODEL) and loaded.config == MODEL
    assert not checkpoint.resumable and checkpoint.step is None and checkpoint.extra == {}
    for name, tensor in model.state_dict().items():
        assert torch.equal(checkpoint.weights[name], tensor) and torch.equal(loaded.state_dict()[name], tensor), name
    payload = torch.load(tmp_path / "model.pt", weights_only=True)
    assert (payload["format"], payload["version"]) == (FORMAT, VERSION)
    assert set(payload["sha256"]) == {field.name for field in dataclasses.fields(Checkpoint)}


def test_fit_stores_its_training_state_and_extra(tmp_path):
    config = TrainConfig(steps=3, batch_tasks=4, max_points=5, eval_tasks=4, eval_every=2, checkpoint_every=2,
                         num_particles=1)
    history = fit(tiny_model(), SinusoidTasks(), config, out_dir=str(tmp_path), progress=False,
                  checkpoint_extra={"schema": {"y": ["growth"]}})
    _, checkpoint = load_checkpoint(str(tmp_path / "model.pt"))
    assert checkpoint.resumable and checkpoint.step == 3 and checkpoint.family == "sinusoid"
    sized, _ = data_sized(config, SinusoidTasks())
    assert checkpoint.train_config == dataclasses.asdict(sized) and checkpoint.extra == {"schema": {"y": ["growth"]}}
    assert checkpoint.history == history and set(history) == set(HISTORY_KEYS)
    assert checkpoint.history["step"] == [1, 2, 3] and checkpoint.history["eval_step"] == [2, 3]
    assert (history["kept_step"], history["stopped"]) == (3, None)  # patience 0: the last step is kept
    for name, tensor in checkpoint.weights.items():
        assert torch.equal(checkpoint.last_weights[name], tensor), name
    for rng in (checkpoint.batch_rng, checkpoint.torch_rng):
        assert rng.dtype == torch.uint8 and rng.shape == (RNG_STATE_SIZE,)
    assert checkpoint.optimizer["param_groups"][0]["lrd"] == pytest.approx(0.1 ** (1 / 3), rel=1e-12)


def test_the_digest_sees_every_value_type_order_and_dtype():
    base = {"a": [1, 2.0, "x", None, True], "t": torch.arange(4, dtype=torch.float32)}
    same = {"a": [1, 2.0, "x", None, True], "t": torch.arange(4, dtype=torch.float32)}
    assert digest(base) == digest(same)
    changed = [
        {"a": [1, 2.0, "x", None, False], "t": base["t"]},  # a value
        {"a": [1.0, 2.0, "x", None, True], "t": base["t"]},  # 1 and 1.0
        {"a": [True, 2.0, "x", None, True], "t": base["t"]},  # 1 and True
        {"a": ["1", 2.0, "x", None, True], "t": base["t"]},  # 1 and "1"
        {"a": (1, 2.0, "x", None, True), "t": base["t"]},  # list and tuple
        {"t": base["t"], "a": base["a"]},  # the order of the keys
        {"a": base["a"], "t": base["t"].double()},  # the dtype
        {"a": base["a"], "t": base["t"].reshape(2, 2)},  # the shape
        {"a": base["a"], "t": base["t"] + torch.tensor([0.0, 0.0, 0.0, 1e-6])},  # one entry
        {"a": [1, 2.0, "x", None, True, None], "t": base["t"]},  # one more item
    ]
    digests = {digest(value) for value in changed}
    assert len(digests) == len(changed) and digest(base) not in digests
    assert digest({"a": [1, 2]}) != digest({"a": [1], "b": [2]})  # lengths delimit the items


def test_writing_refuses_what_is_not_plain_data_and_leaves_no_file(tmp_path):
    model = tiny_model()
    model.save(str(tmp_path / "model.pt"))
    before = (tmp_path / "model.pt").read_bytes()
    checkpoint = model.to_checkpoint()
    checkpoint.extra = {"schema": {"levels": {"east", "west"}}}  # a set
    with pytest.raises(ValueError, match="field 'extra' holds a set; a checkpoint holds only tensors"):
        checkpoint.write(str(tmp_path / "model.pt"))
    assert (tmp_path / "model.pt").read_bytes() == before and os.listdir(tmp_path) == ["model.pt"]


def test_writing_refuses_a_checkpoint_reading_would_refuse(tmp_path):
    checkpoint = tiny_model().to_checkpoint()
    checkpoint.weights = {**checkpoint.weights, "model.raw_noise": torch.tensor([float("nan")])}
    with pytest.raises(ValueError, match="refused to write .*'model.raw_noise' holds NaN"):
        checkpoint.write(str(tmp_path / "model.pt"))
    checkpoint = tiny_model().to_checkpoint(step=1)
    with pytest.raises(ValueError, match=r"training field\(s\) \['batch_rng', "):
        checkpoint.write(str(tmp_path / "model.pt"))
    assert os.listdir(tmp_path) == []


def test_a_resumed_fit_continues_the_checkpoints_state(tmp_path):
    """Resuming takes the checkpoint's weights (not the new model's), step and history."""
    config = TrainConfig(steps=2, batch_tasks=4, max_points=5, eval_tasks=4, eval_every=2, checkpoint_every=2,
                         num_particles=1)
    fit(tiny_model(), SinusoidTasks(), config, out_dir=str(tmp_path), progress=False)
    _, saved = load_checkpoint(str(tmp_path / "model.pt"))
    other = tiny_model(seed=5)
    history = fit(other, SinusoidTasks(), dataclasses.replace(config, steps=2), out_dir=str(tmp_path),
                  progress=False)
    assert history["trained_steps"] == 0 and history["loss"] == saved.history["loss"]
    for name, tensor in saved.weights.items():
        assert torch.equal(other.state_dict()[name], tensor), name


@pytest.mark.parametrize("saved, now, expected", [
    ({"split": {"split_seed": 0, "test_fraction": 0.2}}, {"split": {"split_seed": 0, "test_fraction": 0.2}}, []),
    ({"split": {"split_seed": 0, "test_fraction": 0.2}}, {"split": {"split_seed": 1, "test_fraction": 0.3}},
     ["split_seed 0 (now 1)", "test_fraction 0.2 (now 0.3)"]),
    ({"split": {"split_column": None}}, {"split": {"split_column": "fold"}}, ["split_column None (now 'fold')"]),
    ({"schema": {"group": "site", "y": ["a"]}}, {"schema": {"group": "site", "y": ["b"]}},
     [f"schema y ({OTHER_DATA})"]),
    ({"schema": {"group": "site", "y": ["a"]}}, {"schema": {"group": "plot", "y": ["b"]}},
     ["group 'site' (now 'plot')", f"schema y ({OTHER_DATA})"]),
    ({}, {"schema": {"y": ["a"]}}, [f"schema ({OTHER_DATA})"]),  # a checkpoint without the entry
    ({"data": "a.csv"}, {"data": "b.csv"}, [f"data ({OTHER_DATA})"]),
], ids=["same", "split-options", "split-column", "columns", "group-and-columns", "entry-missing", "plain-value"])
def test_extra_conflicts_name_each_differing_option(saved, now, expected):
    assert extra_conflicts(saved, now) == expected
