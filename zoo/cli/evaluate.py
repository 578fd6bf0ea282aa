"""``zoo eval``: evaluate a pretrained model or a checkpoint folder on its test set."""

import json
import shlex
import sys
from pathlib import Path

import click

from zoo import resources
from zoo.cli.app import json_option, main, print_json, table
from zoo.errors import ZooError

# torch (and so OpenMP) is imported inside the command, after resources.passive_openmp_wait().


def default_dataset(target: str) -> str | None:
    """The dataset a model was trained/evaluated on: from its folder's recipe.json or eval.json, or its registry entry."""
    path = Path(target)
    if path.is_dir():
        for file_name, key in (("eval.json", "dataset"), ("recipe.json", "data")):
            f = path / file_name
            if f.is_file():
                value = json.loads(f.read_text()).get(key)
                value = value.get("name") if isinstance(value, dict) else value
                if value:
                    return value
        return None
    from zoo.plugins import get_host

    entry = get_host().registry.models.get(target)
    return entry.metadata.get("dataset") if entry is not None else None


def evaluate_target(target: str, data: str | None = None, *, k: int = 1000, seed: int = 0, limit: int | None = None,
                    device: str = "auto", batch_size: int | str = "auto", chunk: int | str = "auto",
                    split: str = "test", threads: int | None = None, progress: bool = False) -> dict:
    """Load ``target`` (a name or folder), evaluate it and return the eval record (what --json prints).

    ``batch_size``/``chunk`` "auto" are sized from the device's free memory and the model
    (:func:`zoo.resources.eval_batch_sizes`); ``threads`` None means :func:`zoo.resources.default_threads`.
    The values used are recorded under ``settings``.
    """
    import torch

    import zoo
    import zoo.data
    from zoo.evaluation import evaluate
    from zoo.training.distributed import resolve_device
    from zoo.training.recipe import device_description, zoo_version

    data = data or default_dataset(target)
    if data is None:
        raise ZooError(f"cannot tell which dataset {target!r} belongs to: pass --data NAME")
    threads = threads or resources.default_threads()
    dev = resolve_device(device)
    model = zoo.load(target, device=dev)
    dataset = zoo.data.load(data, split)
    sizes = resources.eval_batch_sizes(model, dev, k=k, batch_size=batch_size, chunk=chunk)
    result = evaluate(model, dataset, k=k, seed=seed, limit=limit, batch_size=sizes["batch_size"],
                      chunk=sizes["chunk"], device=dev, progress=progress, threads=threads)
    description = device_description(dev)
    settings = {"batch_size": sizes["batch_size"], "chunk": sizes["chunk"], "threads": threads,
                "auto": sizes["auto"], "memory_budget_bytes": sizes["memory_budget_bytes"]}
    return {"model": target, **result, "device": f"{dev.type}: {description['name']}", "settings": settings,
            "zoo_version": zoo_version(), "torch_version": torch.__version__,
            "command": "zoo eval " + shlex.join(sys.argv[2:] if sys.argv[1:2] == ["eval"] else sys.argv[1:])}


class AutoInt(click.ParamType):
    """A whole number >= 1, or "auto"."""

    name = "N|auto"

    def convert(self, value, param, ctx):
        if isinstance(value, int) and not isinstance(value, bool) or value == "auto":
            number = value
        else:
            try:
                number = int(str(value).strip())
            except ValueError:
                self.fail(f"{value!r} is not a whole number or 'auto'", param, ctx)
        if number != "auto" and number < 1:
            self.fail(f"must be >= 1 or 'auto', got {number}", param, ctx)
        return number


def show_progress(forced: bool | None, stream=None) -> bool:
    """--progress forces a bar, --no-progress hides it; by default one is drawn when ``stream`` is a terminal."""
    if forced is not None:
        return forced
    isatty = getattr(stream if stream is not None else sys.stderr, "isatty", None)
    return bool(isatty is not None and isatty())


@main.command("eval")
@click.argument("target", metavar="NAME|DIR")
@click.option("--data", "data_name", help="Dataset [default: the one the model was trained on].")
@click.option("--split", default="test", show_default=True)
@click.option("--k", type=int, default=1000, show_default=True, help="Importance samples for the IWAE bound (VAEs).")
@click.option("--limit", type=int, default=None, help="Evaluate on the first N images only.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds binarization, noise and sampling.")
@click.option("--device", default="auto", show_default=True)
@click.option("--batch-size", type=AutoInt(), default="auto", show_default=True,
              help="Images per batch; auto: from the free memory (a quarter of it at most) and the model.")
@click.option("--chunk", type=AutoInt(), default="auto", show_default=True,
              help="Importance samples per image in one decoder pass (a pass holds batch-size x chunk samples); "
                   "auto: sized like --batch-size, and small enough to stay fast on a CPU. Neither changes "
                   "the random draws.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for torch [default: OMP_NUM_THREADS if set, else the CPUs this process may use]. "
                   "Their OpenMP wait policy is passive unless OMP_WAIT_POLICY is set, so that busy torch "
                   "processes on the same cores (zoo serve, zoo train) do not slow each other down many times over.")
@click.option("--progress/--no-progress", "progress", default=None,
              help="Progress bar with an ETA on stderr [default: only when stderr is a terminal].")
@click.option("--out", "out_file", type=click.Path(dir_okay=False), default=None,
              help="Also write the JSON record to this file (e.g. a model card's eval.json).")
@json_option
def eval_command(target, data_name, split, k, limit, seed, device, batch_size, chunk, threads, progress, out_file,
                 as_json):
    """Evaluate NAME (a pretrained model) or DIR (a checkpoint folder) on a test set.

    Runs every registered metric set that applies to the model, decided from what the model
    declares: likelihood (VAEs: negative ELBO, IWAE bound on the NLL, reconstruction BCE and
    active latent units, on binarized test images), denoise (PSNR/SSIM of noisy and denoised
    vs clean), colorize (PSNR/SSIM vs true colour and of the grey-copy baseline), then, for
    every model that declares reconstruct, reconstruction (BCE, MSE, PSNR, SSIM of
    reconstruct(x) vs x). The first set's headline metric is the model's headline. Plugins add
    metric sets with the register_metrics hook (zoo.metrics.MetricSet). Records the seed, the
    data checksum and the batch size, chunk and threads used. Progress goes to stderr, never stdout.
    """
    resources.passive_openmp_wait()  # before torch loads: OpenMP threads sleep instead of spinning
    if k < 1:
        raise click.BadParameter("must be >= 1", param_hint="--k")
    if limit is not None and limit < 1:
        raise click.BadParameter("must be >= 1", param_hint="--limit")
    result = evaluate_target(target, data_name, k=k, seed=seed, limit=limit, device=device, batch_size=batch_size,
                             chunk=chunk, split=split, threads=threads, progress=show_progress(progress))
    if out_file:
        from zoo.checkpoint import atomic_write

        text = json.dumps(result, indent=2) + "\n"
        path = Path(out_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: tmp.write_text(text))
    if as_json:
        print_json(result)
        return
    rows = [[name, f"{value:.4f}", result["metric_info"][name]["unit"], result["metric_info"][name]["description"]]
            for name, value in result["metrics"].items()]
    click.echo(table(rows, ["metric", "value", "unit", "description"]))
    settings = result["settings"]
    click.echo(f"\n{result['model']} on {result['dataset']}/{result['split']} ({result['num_images']} images), "
               f"seed {seed}{f', k={k}' if result['k'] else ''}, {result['device']}, "
               f"batch size {settings['batch_size']}, chunk {settings['chunk']}, {settings['threads']} threads, "
               f"{result['wall_time_s']:.1f} s")
    click.echo(f"data sha256: {result['data_checksum']}")
    click.echo(f"headline: {result['headline']['name']} = {result['headline']['value']:.2f} {result['headline']['unit']}")
