"""Run a written graph with ONNX Runtime and compare it with the PyTorch method it came from."""

from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from zoo.export.errors import ExportError
from zoo.export.graphs import GraphSpec, TaskModule

#: Batch sizes the export checks each graph at: the dynamic axis must work for both.
CHECK_BATCHES = (1, 3)
ATOL = RTOL = 1e-4


def session(path: Path, onnxruntime: ModuleType, threads: int = 1):
    """An ONNX Runtime CPU session for ``path`` with ``threads`` intra-op threads."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@torch.no_grad()
def outputs(sess, module: TaskModule, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(ONNX Runtime's, PyTorch's) output for the batch ``x``; ExportError if their shapes differ."""
    expected = module(x).numpy()
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    if got.shape != expected.shape:
        raise ExportError(f"the ONNX graph returns shape {got.shape} where PyTorch returns {expected.shape}")
    return got, expected


def max_abs_diff(sess, module: TaskModule, x: torch.Tensor) -> float:
    """Largest |ONNX Runtime - PyTorch| on the batch ``x``."""
    got, expected = outputs(sess, module, x)
    return float(np.abs(got - expected).max(initial=0.0))


def check_against_torch(sess, module: TaskModule, spec: GraphSpec, make_input) -> None:
    """ExportError unless the graph matches PyTorch (atol + rtol 1e-4) on a random batch of each CHECK_BATCHES size."""
    for batch in CHECK_BATCHES:
        try:
            got, expected = outputs(sess, module, make_input(batch))
        except ExportError as exc:
            raise ExportError(f"task {spec.task!r}, batch {batch}: {exc}") from None
        excess = np.abs(got - expected) - RTOL * np.abs(expected)
        if excess.max(initial=0.0) > ATOL:
            raise ExportError(f"task {spec.task!r}: the ONNX graph of {spec.method}() disagrees with PyTorch at "
                              f"batch {batch} (max abs diff {np.abs(got - expected).max():.3g}); the method likely "
                              "branches on data values or draws random numbers, which a traced graph cannot reproduce")
