"""The tasks a model can declare, and what each one takes and returns.

Serving and the CLI dispatch on these declarations, never on architecture
names: a model lists task names in ``tasks`` and implements each task's method.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    """One task: the model method that runs it and the kinds of its input and output.

    ``input`` is ``"image"`` (a batch shaped like ``model.input_shape``),
    ``"latent"`` (vectors of ``model.latent_dim``) or ``"count"`` (a number of
    samples). ``output`` is ``"image"``, ``"vector"`` or ``"scalar"`` per item.
    """

    name: str
    method: str
    input: str
    output: str
    description: str


TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task("reconstruct", "reconstruct", "image", "image", "encode then decode an image"),
        Task("encode", "encode", "image", "vector", "the latent code of an image (the posterior mean for VAEs)"),
        Task("decode", "decode", "latent", "image", "the image a latent vector decodes to"),
        Task("sample", "sample", "count", "image", "draw new images from the prior"),
        Task("denoise", "denoise", "image", "image", "remove noise from a corrupted image"),
        Task("colorize", "colorize", "image", "image", "turn a greyscale image into a colour one"),
        Task("anomaly-score", "anomaly_score", "image", "scalar", "how poorly the model explains an image; higher is more anomalous"),
        Task("cluster", "cluster", "image", "scalar", "the index of the mixture component (cluster) an image is assigned to"),
    )
}
