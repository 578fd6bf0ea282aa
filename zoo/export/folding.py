"""Constant folding of a traced graph, before it is translated to ONNX.

Work that depends only on weights and constants (e.g. inverting a fixed colour
matrix with ``torch.linalg.inv``, which ONNX has no operator for) is computed
once at export time and stored in the graph as a tensor.
"""

import torch
from torch import fx


def fold_constants(gm: fx.GraphModule) -> int:
    """Replace every deterministic computation on constants alone by its value; returns how many were stored."""
    values = _constant_values(gm)
    stored = 0
    for node, value in values.items():
        if node.op == "call_function" and any(user not in values for user in node.users):
            name = f"_folded_constant_{stored}"
            gm.register_buffer(name, value.detach().clone())
            with gm.graph.inserting_before(node):
                node.replace_all_uses_with(gm.graph.get_attr(name))
            stored += 1
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return stored


def _constant_values(gm: fx.GraphModule) -> dict[fx.Node, torch.Tensor]:
    values: dict[fx.Node, torch.Tensor] = {}
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            values[node] = _attribute(gm, node.target)
        elif node.op == "call_function" and _foldable(node, values):
            args, kwargs = fx.node.map_arg((node.args, node.kwargs), values.__getitem__)
            result = node.target(*args, **kwargs)
            if isinstance(result, torch.Tensor):
                values[node] = result
    return values


def _foldable(node: fx.Node, values: dict) -> bool:
    inputs = node.all_input_nodes
    seeded = torch.Tag.nondeterministic_seeded in getattr(node.target, "tags", ())
    return bool(inputs) and all(i in values for i in inputs) and not seeded


def _attribute(gm: fx.GraphModule, target: str) -> torch.Tensor:
    owner, _, name = target.rpartition(".")
    return getattr(gm.get_submodule(owner) if owner else gm, name)
