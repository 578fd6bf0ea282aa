"""``export_onnx``: every tensor task of a model as its own ONNX graph, with a manifest."""

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

import zoo
from zoo.api import checkpoint_folder
from zoo.checkpoint import WEIGHTS_NAME, atomic_write, sha256_file
from zoo.export import manifest as manifests
from zoo.export.backend import require_onnx
from zoo.export.graphs import GraphSpec, TaskModule, example_input, graph_specs, left_out
from zoo.export.onnx_file import opset as graph_opset
from zoo.export.onnx_file import ports, save_checked
from zoo.export.trace import EXAMPLE_BATCH, capture, to_onnx
from zoo.export.verify import check_against_torch, max_abs_diff, session
from zoo.model import Autoencoder


def export_onnx(target: str | Path, out: str | Path, *, opset: int | None = None,
                progress: Callable[[str], None] = lambda message: None) -> Path:
    """Export the model ``target`` (a registered name or checkpoint folder) to ONNX graphs in ``out``.

    Writes ``<task>.onnx`` for every task the model declares (except those
    :func:`zoo.export.graphs.left_out` names, which the manifest lists with the reason) and ``manifest.json``,
    reporting each graph through ``progress``; returns the manifest's path. Each
    graph is checked with ``onnx.checker`` and run with ONNX Runtime against PyTorch
    before it counts as written. Raises ExportError (MissingExtraError without the
    ``onnx`` extra) naming the task that failed; the graphs of this run are removed then.
    """
    modules = require_onnx()
    folder = checkpoint_folder(target)
    model = zoo.load(folder, device="cpu")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / manifests.MANIFEST_NAME).unlink(missing_ok=True)  # never describe graphs a failed run removed
    written: list[Path] = []
    graphs, opsets = [], set()
    skipped = left_out(model)
    for task, reason in skipped.items():
        progress(f"{task}: no graph: {reason}")
    try:
        for spec in graph_specs(model):
            start = time.perf_counter()
            path = out / spec.file
            written.append(path)
            entry, used_opset = export_graph(model, spec, path, opset, modules)
            graphs.append(entry)
            opsets.add(used_opset)
            progress(f"{spec.task}: wrote {path} ({path.stat().st_size / 1e6:.2f} MB, "
                     f"{time.perf_counter() - start:.1f} s, "
                     f"max abs diff vs torch {entry['export_check_max_abs_diff']:.2g})")
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    name = Path(target).resolve().name if Path(target).is_dir() else str(target)
    record = manifests.manifest(name=name, model=model, weights_sha256=sha256_file(folder / WEIGHTS_NAME),
                                opset=max(opsets), versions=_versions(modules), graphs=graphs, left_out=skipped)
    path = out / manifests.MANIFEST_NAME
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2) + "\n"))
    progress(f"wrote {path}")
    return path


@torch.no_grad()
def export_graph(model: Autoencoder, spec: GraphSpec, path: Path, opset: int | None, modules: dict) -> tuple[dict, int]:
    """Trace, translate, save, check and verify one graph; returns its manifest record and opset."""
    generator = torch.Generator().manual_seed(0)
    module = TaskModule(model, spec.method)
    make_input = lambda batch: example_input(model, spec, batch, generator)  # noqa: E731
    example = make_input(EXAMPLE_BATCH)
    program = to_onnx(capture(module, example, spec), example, spec, opset)
    proto = save_checked(program, path, modules["onnx"])
    sess = session(path, modules["onnxruntime"])
    check_against_torch(sess, module, spec, make_input)
    onnx = modules["onnx"]
    entry = manifests.graph_entry(spec, model, ports(proto.graph.input, onnx), ports(proto.graph.output, onnx),
                                  max_abs_diff(sess, module, example))
    return entry, graph_opset(proto)


def _versions(modules: dict) -> dict[str, str]:
    return {"zoo_version": zoo.__version__, "torch_version": torch.__version__,
            **{f"{name}_version": module.__version__ for name, module in modules.items()}}
