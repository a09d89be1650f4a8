"""The plate diagram: what ``dot`` makes of the graph, and the files it writes.

Structure is read back from ``dot -Tjson`` (the layout Graphviz computed: clusters with
their nodes, edges with their styles), so the tests check what is drawn, not how the
DOT text happens to be spelled. They use the real ``dot``.
"""

import json

import pyro
import pytest
import torch

from hierarchical_meta import render
from hierarchical_meta.meta_model import HierarchicalMetaModel
from hierarchical_meta.render import SUFFIXES, plate_diagram, render_diagram

SYMBOLS = {"theta": "θ", "phi1": "φ₁", "phi2": "φ₂", "m": "m", "x": "x", "y": "y"}
GENERATIVE = {("m", "phi2"), ("phi1", "phi2"), ("phi2", "y"), ("x", "y"), ("theta", "phi2"), ("theta", "y")}
INFERENCE = {("x", "phi2"), ("y", "phi2"), ("phi2", "phi1"), ("m", "phi1"), ("psi", "phi2"), ("psi", "phi1")}


def small(**kwargs):
    return HierarchicalMetaModel(hidden=8, layers=1, **kwargs)


def layout(graph):
    """(nodes by name, clusters by name -> set of node names and child clusters, edges)."""
    drawn = json.loads(graph.pipe(format="json"))
    objects = drawn["objects"]
    nodes = {o["name"]: o for o in objects if "nodes" not in o}
    clusters = {o["name"]: {"nodes": {objects[i]["name"] for i in o.get("nodes", [])},
                            "subgraphs": {objects[i]["name"] for i in o.get("subgraphs", [])}}
                for o in objects if "nodes" in o}
    edges = [(objects[e["tail"]]["name"], objects[e["head"]]["name"], e.get("style", "solid"))
             for e in drawn.get("edges", [])]
    return nodes, clusters, edges


@pytest.fixture(scope="module")
def model_layout():
    return layout(plate_diagram(small()))


@pytest.fixture(scope="module")
def guide_layout():
    return layout(plate_diagram(small(guide_sees_metadata=True), guide=True))


def test_nodes_carry_the_math_symbols(model_layout):
    nodes, _, _ = model_layout
    assert set(nodes) == set(SYMBOLS)
    for name, symbol in SYMBOLS.items():
        assert nodes[name]["label"] == symbol


def test_observed_nodes_are_shaded_latents_are_not(model_layout):
    nodes, _, _ = model_layout
    for name in ("m", "x", "y"):
        assert "filled" in nodes[name]["style"] and nodes[name]["fillcolor"] == "gray"
    for name in ("phi1", "phi2"):
        assert nodes[name]["fillcolor"] == "white"


def test_points_plate_nested_in_tasks_plate_and_theta_global(model_layout):
    _, clusters, _ = model_layout
    assert set(clusters) == {"cluster_tasks", "cluster_points"}
    assert clusters["cluster_tasks"]["subgraphs"] == {"cluster_points"}
    assert clusters["cluster_points"]["nodes"] == {"x", "y"}
    assert clusters["cluster_tasks"]["nodes"] == {"m", "phi1", "phi2", "x", "y"}  # θ outside every plate


def test_model_edges_solid_and_no_guide_without_guide_flag(model_layout):
    nodes, _, edges = model_layout
    assert "psi" not in nodes
    assert {(a, b) for a, b, _ in edges} == GENERATIVE
    assert all(style == "solid" for _, _, style in edges)


def test_guide_edges_dashed_on_top_of_the_model(guide_layout):
    nodes, clusters, edges = guide_layout
    assert nodes["psi"]["label"] == "ψ" and not any("psi" in c["nodes"] for c in clusters.values())
    assert {(a, b) for a, b, s in edges if s == "solid"} == GENERATIVE
    assert {(a, b) for a, b, s in edges if s == "dashed"} == INFERENCE | {("m", "phi2")}


def test_guide_edges_follow_the_guide_code():
    # q(φ2 | X, Y) without m: the m ⇢ φ2 arrow must disappear, derived from the code.
    _, _, edges = layout(plate_diagram(small(guide_sees_metadata=False), guide=True))
    assert {(a, b) for a, b, s in edges if s == "dashed"} == INFERENCE


def test_contains_what_render_model_draws(model_layout):
    """Everything pyro.render_model draws by itself is in the diagram, unchanged."""
    meta_model = small()
    with pyro.get_param_store().scope():
        nodes, clusters, edges = layout(pyro.render_model(meta_model.model,
                                                          model_args=render.dummy_inputs(meta_model.config)))
    ours_nodes, ours_clusters, ours_edges = model_layout
    assert set(nodes) <= set(ours_nodes)
    for name, node in nodes.items():
        assert node["fillcolor"] == ours_nodes[name]["fillcolor"]
    assert {k: v["nodes"] for k, v in clusters.items()} == {k: v["nodes"] for k, v in ours_clusters.items()}
    assert set(edges) <= set(ours_edges)


def test_theta_edges_come_from_the_parameters_each_density_reads():
    relations = render.model_relations(small())
    reads = relations["sample_theta"]
    assert not reads["phi1"] and not reads["m"] and not reads["x"]  # N(0, I) and flat densities
    assert any("$$$prior_mean." in n for n in reads["phi2"]) and not any("$$$prior_mean." in n for n in reads["y"])
    assert any("$$$offset." in n for n in reads["y"]) and all(n.startswith("model$$$") for n in reads["y"])


def test_rendering_leaves_the_param_store_alone():
    pyro.clear_param_store()
    pyro.param("kept", torch.ones(2))
    plate_diagram(small(), guide=True)
    assert list(pyro.get_param_store().keys()) == ["kept"]
    pyro.clear_param_store()


@pytest.mark.parametrize("suffix, magic", [(".svg", b"<svg"), (".png", b"\x89PNG"), (".pdf", b"%PDF")])
def test_writes_image_and_dot_source(tmp_path, suffix, magic):
    assert suffix in SUFFIXES
    image, dot = render_diagram(tmp_path / "figures" / f"plate{suffix}", small(), guide=True)
    assert image == str(tmp_path / "figures" / f"plate{suffix}") and dot == str(tmp_path / "figures" / "plate.dot")
    with open(image, "rb") as f:
        content = f.read()
    assert magic in content[:400]
    with open(dot, encoding="utf-8") as f:
        source = f.read()
    assert source.startswith("digraph") and "φ₂" in source and "dashed" in source


def test_bad_suffix_names_the_allowed_ones(tmp_path):
    with pytest.raises(ValueError, match=r"\.svg, \.png, \.pdf"):
        render_diagram(tmp_path / "plate.jpg", small())
    assert not list(tmp_path.iterdir())


def test_missing_dot_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(render.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="apt-get install graphviz"):
        render_diagram(tmp_path / "plate.svg", small())


def test_rejects_something_that_is_not_a_meta_model():
    with pytest.raises(ValueError, match="HierarchicalMetaModel"):
        plate_diagram(object())
