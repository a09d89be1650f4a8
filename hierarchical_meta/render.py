"""The plate diagram of the model, drawn by ``pyro.render_model`` from the model code itself.

``pyro.render_model`` traces :class:`~hierarchical_meta.model.GenerativeModel` on a few
dummy tasks and draws its sample sites (observed m, x, y shaded; latent φ1, φ2 white),
the plates (``points`` nested in ``tasks``) and the dependencies it tracks through the
code. Two things it cannot show are added to the graph it returns, both derived from
the code rather than drawn by hand:

- **θ as one global node.** ``pyro.module`` registers every network weight as its own
  param (``model$$$prior_mean.0.weight``, ...), and ``render_model`` does not see them
  (the networks read their ``nn.Parameter`` directly). The sites whose log-density
  depends on θ are found by autograd: a site gets an edge θ → site when its
  log-density, evaluated at detached values, has a gradient with respect to some
  model parameter (φ2 and y).
- **The guide's inference arrows** (``guide=True``), dashed, as in the classic VAE
  figure: the guide is traced by ``pyro.infer.inspect.get_model_relations`` with its
  inputs x, y, m declared as observed sites, so an edge u ⇢ v is drawn whenever
  q(v | ...) reads u (q(φ2 | x, y[, m]) and q(φ1 | φ2, m)); ψ, the guide's parameters,
  is one global node found the same way as θ. A legend spells out both factorizations.

Files: :func:`render_diagram` writes SVG, PNG or PDF by the file's suffix and the DOT
source beside it (same stem, ``.dot``). Rendering needs Graphviz's ``dot`` program.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.infer.inspect import get_model_relations
from pyro.poutine.util import site_is_subsample
from torch import nn

__all__ = ["SUFFIXES", "plate_diagram", "render_diagram", "model_relations", "guide_relations", "dummy_inputs"]

SUFFIXES = (".svg", ".png", ".pdf")
THETA, PSI = "theta", "psi"
# Labels in the docs' symbols (Unicode subscripts render in every SVG viewer).
SYMBOLS = {"m": "m", "x": "x", "y": "y", "phi1": "φ₁", "phi2": "φ₂", THETA: "θ", PSI: "ψ"}
PLATE_LABELS = {"tasks": "tasks  t = 1, …, T", "points": "points  n = 1, …, Nₜ"}
GUIDE_COLOR = "#1f5fa8"
FONT = "DejaVu Serif"
PNG_DPI = 144
INSTALL_DOT = ("install Graphviz, which provides it: `sudo apt-get install graphviz` (Debian/Ubuntu), "
               "`sudo dnf install graphviz` (Fedora), `brew install graphviz` (macOS) or "
               "`conda install -c conda-forge graphviz`; see https://graphviz.org/download/")


# -- inputs --------------------------------------------------------------------------------
def dummy_inputs(config, tasks: int = 2, points: int = 3) -> tuple[torch.Tensor, ...]:
    """Small random ``(x, metadata, y, mask)`` with the dimensions of ``config``.

    x [tasks, points, Dx], metadata [tasks, Dm], y [tasks, points, Dy], mask [tasks, points].
    Only the structure of the model matters for the diagram, not the values.
    """
    if tasks < 1 or points < 1:
        raise ValueError(f"tasks and points must be >= 1, got tasks={tasks}, points={points}")
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(tasks, points, config.x_dim, generator=generator)
    metadata = torch.randn(tasks, config.metadata_dim, generator=generator)
    y = torch.randn(tasks, points, config.y_dim, generator=generator)
    return x, metadata, y, torch.ones(tasks, points, dtype=torch.bool)


def _default_meta_model(meta_model):
    if meta_model is None:
        from .meta_model import HierarchicalMetaModel

        return HierarchicalMetaModel()
    for name in ("model", "guide", "config"):
        if not hasattr(meta_model, name):
            raise ValueError(f"meta_model must be a HierarchicalMetaModel (with .model, .guide and .config), "
                             f"got {type(meta_model).__name__} without .{name}")
    return meta_model


# -- relations derived from the code ----------------------------------------------------
def param_dependencies(fn: Callable, module: nn.Module, args: Sequence, prefix: str) -> dict[str, list[str]]:
    """For each sample site of ``fn(*args)``: the parameters of ``module`` its log-density reads.

    The values of all sites are detached first (``poutine.condition``), so a site lists
    only the parameters of its own distribution, not those upstream of its parents.
    Names carry ``prefix`` as ``pyro.module`` registers them (``"model$$$offset.0.bias"``).
    """
    named = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
    with torch.random.fork_rng(), pyro.validation_enabled(False):
        trace = poutine.trace(fn).get_trace(*args)
        values = {name: site["value"].detach() for name, site in trace.nodes.items()
                  if site["type"] == "sample" and not site["is_observed"]}
        trace = poutine.trace(poutine.condition(fn, data=values)).get_trace(*args)
    found = {}
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        log_prob = site["fn"].log_prob(site["value"]).sum()
        used = []
        if log_prob.requires_grad:
            grads = torch.autograd.grad(log_prob, [p for _, p in named], allow_unused=True)
            used = [f"{prefix}$$${n}" for (n, _), g in zip(named, grads, strict=True) if g is not None]
        found[name] = used
    return found


def model_relations(meta_model=None, tasks: int = 2, points: int = 3) -> dict:
    """``get_model_relations`` of the model, plus ``"sample_theta"``: site -> model params it reads."""
    meta_model = _default_meta_model(meta_model)
    args = dummy_inputs(meta_model.config, tasks, points)
    with pyro.get_param_store().scope():
        relations = get_model_relations(meta_model.model, args)
        relations["sample_theta"] = param_dependencies(meta_model.model, meta_model.model, args, "model")
    return relations


def _guide_with_observed_inputs(guide: nn.Module) -> Callable:
    """The guide with its inputs m, x, y declared as observed (flat-density) sites.

    ``get_model_relations`` tracks dependencies between sample sites only; declaring the
    inputs as sites lets it report which inputs each of the guide's distributions reads.
    """

    def wrapped(x, metadata, y, mask):
        T, N = x.shape[:2]
        x = pyro.sample("x", dist.ImproperUniform(constraints.real, (T, N), x.shape[-1:]), obs=x)
        y = pyro.sample("y", dist.ImproperUniform(constraints.real, (T, N), y.shape[-1:]), obs=y)
        metadata = pyro.sample("m", dist.ImproperUniform(constraints.real, (T,), metadata.shape[-1:]),
                               obs=metadata)
        return guide(x, metadata, y, mask)

    return wrapped


def guide_relations(meta_model=None, tasks: int = 2, points: int = 3) -> dict:
    """``get_model_relations`` of the guide (inputs as sites), plus ``"sample_psi"``."""
    meta_model = _default_meta_model(meta_model)
    args = dummy_inputs(meta_model.config, tasks, points)
    wrapped = _guide_with_observed_inputs(meta_model.guide)
    with pyro.get_param_store().scope():
        relations = get_model_relations(wrapped, args)
        relations["sample_psi"] = param_dependencies(wrapped, meta_model.guide, args, "guide")
    return relations


# -- the graph -----------------------------------------------------------------------------
def _symbol(name: str) -> str:
    return SYMBOLS.get(name, name)


def _factor(density: str, site: str, parents: Sequence[str], observed: Sequence[str]) -> str:
    """``p(φ₂ | φ₁, m)``: latent parents first, then observed ones, each in trace order."""
    parents = [p for p in parents if p not in observed] + [p for p in parents if p in observed]
    given = f" | {', '.join(_symbol(p) for p in parents)}" if parents else ""
    return f"{density}({_symbol(site)}{given})"


def plate_diagram(meta_model=None, guide: bool = False, tasks: int = 2, points: int = 3):
    """The plate diagram as a ``graphviz.Digraph`` (θ global; with ``guide``, q's arrows dashed).

    ``meta_model`` is a :class:`~hierarchical_meta.meta_model.HierarchicalMetaModel`
    (default: one with the default configuration); ``tasks`` and ``points`` size the
    dummy batch the model is traced on (the diagram does not depend on them).
    """
    import graphviz

    meta_model = _default_meta_model(meta_model)
    args = dummy_inputs(meta_model.config, tasks, points)
    with pyro.get_param_store().scope(), torch.random.fork_rng():
        drawn = pyro.render_model(meta_model.model, model_args=args)
    relations = model_relations(meta_model, tasks, points)
    inference = guide_relations(meta_model, tasks, points) if guide else None

    graph = graphviz.Digraph(name="plate_diagram")
    graph.attr(fontname=FONT, nodesep="0.4", ranksep="0.45")
    graph.attr("node", fontname=FONT, fontsize="16")
    graph.attr("edge", arrowsize="0.8")
    if inference is not None:  # declared first, so that dot places ψ left of the plates
        graph.node(PSI, label=SYMBOLS[PSI], shape="plain", fontsize="20", fontcolor=GUIDE_COLOR)
    graph.body.extend(drawn.body)  # render_model's graph, unchanged; what follows amends it

    legend = [("solid", "black", "generative model  " + _draw_model(graph, relations))]
    if inference is not None:
        legend.append(("dashed", GUIDE_COLOR,
                       "inference (guide)  " + _draw_guide(graph, inference, list(relations["sample_sample"]))))
    graph.attr(label=_legend(legend), labelloc="b", labeljust="l", fontsize="12")
    return graph


def _draw_model(graph, relations: dict) -> str:
    """Label the model's sites, its plates and θ's arrows in ``graph``; returns the model's factors."""
    sites, observed = list(relations["sample_sample"]), relations["observed"]
    for site in sites:  # re-declaring a node in DOT updates its attributes and keeps its plate
        graph.node(site, label=_symbol(site))
    if "tasks" in relations["plate_sample"]:  # same subgraph names: DOT merges the attributes
        with graph.subgraph(name="cluster_tasks") as plate:
            plate.attr(label=PLATE_LABELS["tasks"], fontsize="12")
            if "points" in relations["plate_sample"]:
                with plate.subgraph(name="cluster_points") as inner:
                    inner.attr(label=PLATE_LABELS["points"], fontsize="12")
    theta_sites = [s for s in sites if relations["sample_theta"].get(s)]
    if theta_sites:
        graph.node(THETA, label=SYMBOLS[THETA], shape="plain", fontsize="20")
        for site in theta_sites:
            graph.edge(THETA, site)
    return " ".join(_factor("p<sub>θ</sub>" if relations["sample_theta"].get(s) else "p", s,
                            relations["sample_sample"][s], observed)
                    for s in sites if s not in observed or relations["sample_theta"].get(s))


def _draw_guide(graph, inference: dict, sites: Sequence[str]) -> str:
    """Draw the guide's arrows (dashed) into ``graph``; returns the guide's factors."""
    latents = [s for s in inference["sample_sample"] if s not in inference["observed"]]
    unknown = [s for s in latents if s not in sites]
    if unknown:
        raise ValueError(f"the guide samples sites {unknown} that the model does not have")
    style = dict(style="dashed", color=GUIDE_COLOR, constraint="false", penwidth="1.2")
    for site in latents:
        for parent in inference["sample_sample"][site]:
            graph.edge(parent, site, **style)
    for site in latents:
        if inference["sample_psi"].get(site):
            graph.edge(PSI, site, **style)
    return " ".join(_factor("q<sub>ψ</sub>" if inference["sample_psi"].get(s) else "q", s,
                            inference["sample_sample"][s], inference["observed"]) for s in latents)


def _legend(entries: Sequence[tuple[str, str, str]]) -> str:
    """An HTML-like caption: per edge style, a short line drawn in that style and its meaning."""
    rows = "".join(
        f'<tr><td width="36" sides="b" border="1" style="{style}" color="{color}"> </td>'
        f'<td align="left"><font color="{color}">  {text}</font></td></tr>'
        for style, color, text in entries)
    return f'<<table border="0" cellspacing="2" cellpadding="1">{rows}</table>>'


# -- files ---------------------------------------------------------------------------------
def _require_dot() -> None:
    if shutil.which("dot") is None:
        raise RuntimeError("Graphviz's `dot` program is not on PATH; the plate diagram needs it. " + INSTALL_DOT)


def render_diagram(path: str, meta_model=None, guide: bool = False, tasks: int = 2,
                   points: int = 3) -> tuple[str, str]:
    """Write the plate diagram to ``path`` (.svg, .png or .pdf) and its DOT source beside it.

    The DOT source, exactly what was rendered, goes to the same stem with suffix ``.dot``
    (PNGs are drawn at ``PNG_DPI``). Raises ``ValueError`` for another suffix and
    ``RuntimeError`` saying how to install Graphviz when ``dot`` is missing. Returns
    ``(image_path, dot_path)``. See :func:`plate_diagram` for the arguments.
    """
    stem, suffix = os.path.splitext(os.fspath(path))
    if suffix.lower() not in SUFFIXES:
        raise ValueError(f"cannot tell the image format of {os.fspath(path)!r}: its suffix must be one of "
                         f"{', '.join(SUFFIXES)} (e.g. plate_diagram.svg)")
    _require_dot()
    graph = plate_diagram(meta_model, guide=guide, tasks=tasks, points=points)
    if suffix.lower() == ".png":
        graph.attr(dpi=str(PNG_DPI))  # a raster sharp enough for docs; vector formats keep their size
    image = graph.pipe(format=suffix.lower()[1:])
    directory = os.path.dirname(stem)
    if directory:
        os.makedirs(directory, exist_ok=True)
    dot_path = stem + ".dot"
    with open(os.fspath(path), "wb") as f:
        f.write(image)
    with open(dot_path, "w", encoding="utf-8") as f:
        f.write(graph.source)
    return os.fspath(path), dot_path
