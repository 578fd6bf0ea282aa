"""The saved ONNX file: its batch axis named ``N``, checked by onnx's checker, its ports described."""

from pathlib import Path
from types import ModuleType

BATCH_AXIS = "N"


def save_checked(onnx_program, path: Path, onnx: ModuleType):
    """Save ``onnx_program`` to ``path``, batch axis named, after ``onnx.checker.check_model``; returns the proto."""
    onnx_program.save(str(path))
    proto = onnx.load(str(path))
    name_batch_axis(proto)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
    return proto


def name_batch_axis(proto) -> None:
    """Rename the exporter's symbol for the first input's axis 0 (e.g. ``s40``) to ``N`` everywhere in the graph."""
    graph = proto.graph
    symbol = graph.input[0].type.tensor_type.shape.dim[0].dim_param
    for value in (*graph.input, *graph.output, *graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if symbol and dim.dim_param == symbol:
                dim.dim_param = BATCH_AXIS


def ports(values, onnx: ModuleType) -> list[dict]:
    """Name, shape (``"N"`` for the batch axis) and dtype of graph inputs or outputs."""
    return [{"name": v.name,
             "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim],
             "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name} for v in values]


def opset(proto) -> int:
    """The default-domain opset the graph was written for."""
    return next(entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx"))
