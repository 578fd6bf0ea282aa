"""manifest.json: what a server needs to run the graphs without ae-zoo."""

import inspect

from zoo.export.graphs import GraphSpec
from zoo.model import Autoencoder
from zoo.tasks import TASKS

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
PREPROCESSING = ("None outside the graphs. Inputs are float32 tensors as listed per graph; images are pixel values "
                 "in [0, 1] (uint8 / 255), shaped (N, C, H, W), channels first. Any colour-space conversion a model "
                 "does (e.g. to and from CIE Lab) is inside its graph, and image outputs are already in [0, 1].")
COLOUR = {1: "greyscale", 3: "RGB"}
GREY_FROM_COLOUR = " (from a colour image: BT.601 luma 0.299 R + 0.587 G + 0.114 B, as PIL's convert('L'))"
_MEANINGS = {
    "image": ([0.0, 1.0], "images, pixel values in [0, 1]"),
    "latent": (None, "latent vectors, unbounded"),
    "vector": (None, "latent vectors, unbounded"),
    "scalar": (None, "one unbounded score per image"),
}


def graph_entry(spec: GraphSpec, model: Autoencoder, inputs: list[dict], outputs: list[dict],
                max_abs_diff: float) -> dict:
    """The manifest record of one written graph; ``inputs``/``outputs`` are its ports as read back from the file."""
    return {
        "file": spec.file,
        "task": spec.task,
        "description": TASKS[spec.task].description,
        "computes": spec.note,
        "method_doc": _first_line(getattr(model, spec.method)),
        "inputs": [_port(p, spec.input_kind, spec) for p in inputs],
        "outputs": [_port(p, spec.output_kind) for p in outputs],
        "export_check_max_abs_diff": max_abs_diff,
    }


def manifest(*, name: str, model: Autoencoder, weights_sha256: str, opset: int, versions: dict[str, str],
             graphs: list[dict], left_out: dict[str, str] | None = None) -> dict:
    """The whole manifest: the model, its weights, the toolchain, every graph and the tasks left out (with why)."""
    return {"format": MANIFEST_FORMAT, "model": name, "architecture": model.architecture,
            "weights_sha256": weights_sha256, "opset": opset, **versions, "batch_axis": "N",
            "preprocessing": PREPROCESSING, "graphs": graphs,
            "left_out": [{"task": task, "reason": reason} for task, reason in (left_out or {}).items()]}


def _port(port: dict, kind: str, input_of: GraphSpec | None = None) -> dict:
    """A port with its value range and meaning; ``input_of`` is the graph whose input it is."""
    value_range, meaning = _MEANINGS[kind]
    if kind == "image":
        channels = port["shape"][1]
        meaning += f", {COLOUR.get(channels, f'{channels} channels')}"
        if input_of is not None and channels == 1:
            meaning += GREY_FROM_COLOUR
    if input_of is not None and TASKS[input_of.task].input == "count":
        meaning = "draws z ~ N(0, I) made by the client, one row per image"
    return {**port, "range": value_range, "meaning": meaning}


def _first_line(method) -> str:
    return (inspect.getdoc(method) or "").split("\n\n")[0].replace("\n", " ")
