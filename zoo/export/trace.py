"""Trace one task method into an ExportedProgram with a dynamic batch axis, and translate it to ONNX."""

import re
import traceback
from pathlib import Path

import torch

from zoo.export.errors import ExportError
from zoo.export.folding import fold_constants
from zoo.export.graphs import GraphSpec, TaskModule

#: The batch size of the example input: 1 would let the tracer specialise the batch axis.
EXAMPLE_BATCH = 2
_OP = re.compile(r"OpOverload\(op='([^']+)'")


def capture(module: TaskModule, example: torch.Tensor, spec: GraphSpec) -> torch.export.ExportedProgram:
    """``module`` traced by ``torch.export`` with axis 0 dynamic; ExportError if it does not trace.

    Constants are folded, and the program is decomposed to core ATen ops, whose ONNX
    translations are the numerically stable ones (the exporter's own translation of
    ``binary_cross_entropy_with_logits`` overflows to inf for large negative logits).
    """
    shapes = ({0: torch.export.Dim("N")},)
    try:
        program = torch.export.export(module, (example,), dynamic_shapes=shapes, strict=False)
        folded = program.module()
        fold_constants(folded)
        program = torch.export.export(folded, (example,), dynamic_shapes=shapes, strict=False)
        return program.run_decompositions()
    except Exception as exc:  # torch.export raises many types; each becomes one clear ExportError
        raise ExportError(f"task {spec.task!r}: {spec.method}() does not trace with torch.export: "
                          f"{describe(exc)}") from exc


def to_onnx(program: torch.export.ExportedProgram, example: torch.Tensor, spec: GraphSpec, opset: int | None):
    """Translate a captured program with torch's dynamo ONNX exporter; ExportError names an op it lacks."""
    try:
        return torch.onnx.export(program, (example,), dynamo=True, input_names=[spec.input_name],
                                 output_names=[spec.output_name], opset_version=opset, verbose=False)
    except Exception as exc:  # the exporter wraps translation failures in its own error types
        raise ExportError(f"task {spec.task!r}: {spec.method}() traces but does not translate to ONNX: "
                          f"{describe(exc)}") from exc


def describe(exc: BaseException, limit: int = 500) -> str:
    """The failing ATen op if one is named, the exception's type and first line, and the model code that raised it."""
    text = str(exc)
    for cause in _causes(exc):
        text += "\n" + str(cause)
    op = _OP.search(text)
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    summary = f"{type(exc).__name__}: {first}"
    if op:
        summary = f"op {op.group(1)} has no ONNX translation ({summary})"
    frame = _model_frame(exc)
    if frame is not None:
        summary += f" [at {Path(frame.filename).name}:{frame.lineno} in {frame.name}(): {frame.line}]"
    return summary if len(summary) <= limit else summary[: limit - 3] + "..."


def _model_frame(exc: BaseException) -> traceback.FrameSummary | None:
    """The innermost frame of the traceback that is neither torch's code nor this package's."""
    skip = (str(Path(torch.__file__).parent), str(Path(__file__).parent))
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith(skip)]
    return frames[-1] if frames else None


def _causes(exc: BaseException):
    seen = exc.__cause__ or exc.__context__
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__
