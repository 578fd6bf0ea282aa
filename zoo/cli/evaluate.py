"""``zoo eval``: evaluate a pretrained model or a checkpoint folder on its test set."""

import json
import shlex
import sys
from pathlib import Path

import click

import zoo
import zoo.data
from zoo.checkpoint import atomic_write
from zoo.cli.app import json_option, main, print_json, table
from zoo.errors import ZooError


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
                    device: str = "auto", batch_size: int = 500, chunk: int = 100, split: str = "test") -> dict:
    """Load ``target`` (a name or folder), evaluate it and return the eval record (what --json prints)."""
    import torch

    from zoo.evaluation import evaluate
    from zoo.training.distributed import resolve_device
    from zoo.training.recipe import device_description, zoo_version

    data = data or default_dataset(target)
    if data is None:
        raise ZooError(f"cannot tell which dataset {target!r} belongs to: pass --data NAME")
    dev = resolve_device(device)
    model = zoo.load(target, device=dev)
    dataset = zoo.data.load(data, split)
    result = evaluate(model, dataset, k=k, seed=seed, limit=limit, batch_size=batch_size, chunk=chunk, device=dev)
    description = device_description(dev)
    return {"model": target, **result, "device": f"{dev.type}: {description['name']}",
            "zoo_version": zoo_version(), "torch_version": torch.__version__,
            "command": "zoo eval " + shlex.join(sys.argv[2:] if sys.argv[1:2] == ["eval"] else sys.argv[1:])}


@main.command("eval")
@click.argument("target", metavar="NAME|DIR")
@click.option("--data", "data_name", help="Dataset [default: the one the model was trained on].")
@click.option("--split", default="test", show_default=True)
@click.option("--k", type=int, default=1000, show_default=True, help="Importance samples for the IWAE bound (VAEs).")
@click.option("--limit", type=int, default=None, help="Evaluate on the first N images only.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds binarization, noise and sampling.")
@click.option("--device", default="auto", show_default=True)
@click.option("--batch-size", type=int, default=500, show_default=True)
@click.option("--chunk", type=int, default=100, show_default=True, help="Importance samples per forward pass.")
@click.option("--out", "out_file", type=click.Path(dir_okay=False), default=None,
              help="Also write the JSON record to this file (e.g. a model card's eval.json).")
@json_option
def eval_command(target, data_name, split, k, limit, seed, device, batch_size, chunk, out_file, as_json):
    """Evaluate NAME (a pretrained model) or DIR (a checkpoint folder) on a test set.

    Runs every registered metric set that applies to the model, decided from what the model
    declares: likelihood (VAEs: negative ELBO, IWAE bound on the NLL and reconstruction BCE,
    on binarized test images), denoise (PSNR/SSIM of noisy and denoised vs clean), colorize
    (PSNR/SSIM vs true colour and of the grey-copy baseline), then, for every model that
    declares reconstruct, reconstruction (BCE, MSE, PSNR, SSIM of reconstruct(x) vs x). The
    first set's headline metric is the model's headline. Plugins add metric sets with the
    register_metrics hook (zoo.metrics.MetricSet). Records the seed and the data checksum.
    """
    if k < 1:
        raise click.BadParameter("must be >= 1", param_hint="--k")
    result = evaluate_target(target, data_name, k=k, seed=seed, limit=limit, device=device, batch_size=batch_size,
                             chunk=chunk, split=split)
    if out_file:
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
    click.echo(f"\n{result['model']} on {result['dataset']}/{result['split']} ({result['num_images']} images), "
               f"seed {seed}{f', k={k}' if result['k'] else ''}, {result['device']}")
    click.echo(f"data sha256: {result['data_checksum']}")
    click.echo(f"headline: {result['headline']['name']} = {result['headline']['value']:.2f} {result['headline']['unit']}")
