"""Which ONNX graphs a model gets: one per tensor task it declares, chosen by the task's declared kinds.

Image- and latent-input tasks export the method ``model.run_task`` calls. A
count-input task (``sample``) draws z ~ N(0, I) inside the model, which a
deterministic graph cannot do; it becomes the decode of a latent the client
draws and passes in, provided that the model's own ``sample`` really is that
decode (checked on seeded draws). A model with another prior (a mixture, a
VampPrior) gets no such graph: :func:`left_out` says why.
"""

from dataclasses import dataclass

import torch
from torch import nn

from zoo.export.errors import ExportError
from zoo.model import Autoencoder
from zoo.tasks import TASKS

#: The task whose method turns the client's z ~ N(0, I) into the images of a count-input task.
PRIOR_DECODER_TASK = "decode"

#: The graph input each task input kind becomes.
INPUT_NAMES = {"image": "image", "latent": "latent", "count": "latent"}


@dataclass(frozen=True)
class GraphSpec:
    """One graph: the task it serves, the model method it runs and its input/output names and kinds."""

    task: str
    method: str
    input_name: str
    input_kind: str
    output_name: str
    output_kind: str
    note: str

    @property
    def file(self) -> str:
        return f"{self.task}.onnx"


class TaskModule(nn.Module):
    """``forward`` runs one model method: the callable the exporter traces."""

    def __init__(self, model: Autoencoder, method: str):
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self.model, self.method)(x)


def graph_specs(model: Autoencoder) -> list[GraphSpec]:
    """The graphs of every task ``model`` declares, in declaration order, less those :func:`left_out` names."""
    skipped = left_out(model)
    return [graph_spec(model, name) for name in model.tasks if name not in skipped]


def left_out(model: Autoencoder) -> dict[str, str]:
    """``{task: reason}`` for the declared tasks that get no graph.

    A count-input task is left out when ``model.<method>(n)`` is not ``decode(z)`` for the
    ``z = torch.randn(n, latent_dim)`` drawn from the same seeded generator: its prior is not
    N(0, I), and a graph fed standard normal draws would return the wrong distribution.
    """
    reasons = {}
    for name in model.tasks:
        task = model.task(name)
        if task.input == "count" and model.latent_dim is not None and not _samples_standard_normal(model, task.method):
            reasons[name] = (f"{task.method}(n) does not decode z ~ N(0, I) (the model's prior is another "
                             f"distribution), so a graph fed the client's standard normal draws would sample "
                             f"the wrong images; sample with PyTorch (zoo sample) instead")
    return reasons


@torch.no_grad()
def _samples_standard_normal(model: Autoencoder, method: str, n: int = 4, seed: int = 0) -> bool:
    drawn = getattr(model, method)(n, generator=torch.Generator().manual_seed(seed))
    decoded = getattr(model, TASKS[PRIOR_DECODER_TASK].method)(
        torch.randn(n, model.latent_dim, generator=torch.Generator().manual_seed(seed)))
    return drawn.shape == decoded.shape and torch.allclose(drawn, decoded, rtol=1e-5, atol=1e-6)


def graph_spec(model: Autoencoder, name: str) -> GraphSpec:
    """The graph of the declared task ``name``."""
    task = model.task(name)
    if task.input not in INPUT_NAMES:
        raise ExportError(f"task {name!r}: no ONNX graph is defined for input kind {task.input!r}")
    if task.input == "count":
        decoder = TASKS[PRIOR_DECODER_TASK]
        return GraphSpec(name, decoder.method, INPUT_NAMES[task.input], decoder.input, name, task.output,
                         f"{decoder.method}() of a latent z ~ N(0, I) the client draws, shaped (N, latent_dim): "
                         f"with z = torch.randn(n, latent_dim) this is what {task.method}(n) returns")
    return GraphSpec(name, task.method, INPUT_NAMES[task.input], task.input, name, task.output,
                     f"{task.method}() of the input batch")


def example_input(model: Autoencoder, spec: GraphSpec, batch: int, generator: torch.Generator) -> torch.Tensor:
    """A random batch of the graph's input: images uniform in [0, 1], latents standard normal."""
    if spec.input_kind == "image":
        return torch.rand(batch, *model.input_shape, generator=generator)
    if model.latent_dim is None:
        raise ExportError(f"task {spec.task!r} takes a latent, but the model has no latent_dim")
    return torch.randn(batch, model.latent_dim, generator=generator)
