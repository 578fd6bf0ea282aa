"""``zoo train``: train an architecture on a dataset, resumably; also runs under torchrun.

Exit status: 0 when training completes; 1 on an error (e.g. a NaN loss, named by its step);
130 after SIGINT and 143 after SIGTERM, once the current step has finished and a checkpoint
has been saved (continue with the same command plus ``--resume``).
"""

import json
import shlex
import sys
from pathlib import Path

import click

import zoo
import zoo.data
from zoo.cli.app import main
from zoo.training import Interrupted, TrainConfig, Trainer, setup, teardown
from zoo.training.trainer import LR_SCHEDULES


def parse_overrides(pairs: tuple[str, ...]) -> dict:
    """``key=value`` pairs; values are JSON where they parse (``hidden=[500,500]``, ``beta=4``), else strings."""
    values = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--set")
        try:
            values[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            values[key.strip()] = raw
    return values


def invocation(world_size: int) -> str:
    """The command line of this run, as a user would type it again."""
    args = sys.argv[1:]
    if args[:1] == ["train"]:
        args = args[1:]
    prefix = f"torchrun --nproc_per_node={world_size} -m zoo.training" if world_size > 1 else "zoo train"
    return f"{prefix} {shlex.join(args)}"


@main.command("train")
@click.argument("architecture")
@click.option("--data", "data_name", required=True, help="Dataset name (see `zoo data list`).")
@click.option("--preset", help="Start from one of the architecture's presets.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Set a model config field (repeatable).")
@click.option("--epochs", type=int, default=10, show_default=True)
@click.option("--batch-size", type=int, default=128, show_default=True, help="Global batch size (split over ranks).")
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--lr-schedule", type=click.Choice(LR_SCHEDULES), default="constant", show_default=True)
@click.option("--min-lr-ratio", type=float, default=0.0, show_default=True, help="Final lr / lr for cosine.")
@click.option("--weight-decay", type=float, default=0.0, show_default=True)
@click.option("--grad-clip", type=float, default=0.0, show_default=True, help="Max gradient norm; 0 = off.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--limit", type=int, default=None, help="Train on the first N training images only.")
@click.option("--val-limit", type=int, default=None, help="Validate on the first N test images only.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Run folder [default: runs/ARCH-DATA].")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show the progress bar.")
def train_command(architecture, data_name, preset, overrides, epochs, batch_size, lr, lr_schedule, min_lr_ratio,
                  weight_decay, grad_clip, seed, limit, val_limit, out, resume, device, progress):
    """Train ARCHITECTURE on a dataset; checkpoints every epoch into --out.

    SIGINT/SIGTERM finish the current step, save a checkpoint and exit with 130/143;
    run the same command with --resume to continue bit-exactly. Under
    `torchrun --nproc_per_node=N -m zoo.training ARCH ...` the same options train with DDP.
    """
    ctx = setup(device)
    try:
        import torch

        torch.manual_seed(seed)  # the initial weights depend on the seed alone
        model = zoo.create(architecture, preset, **parse_overrides(overrides))
        train_data = zoo.data.load(data_name, "train")
        val_data = zoo.data.load(data_name, "test")
        if tuple(train_data.images.shape[1:]) != tuple(model.data_shape):
            raise click.ClickException(
                f"{architecture} is configured for data of shape {tuple(model.data_shape)}, but {data_name} has "
                f"{tuple(train_data.images.shape[1:])}; adjust it with --set (e.g. image_channels, image_size)")
        config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, lr_schedule=lr_schedule,
                             min_lr_ratio=min_lr_ratio, weight_decay=weight_decay, grad_clip=grad_clip, seed=seed,
                             train_limit=limit, val_limit=val_limit)
        run_dir = Path(out) if out else Path("runs") / f"{architecture}-{data_name}"
        if not resume and ctx.is_main and (run_dir / "checkpoint.json").exists():
            raise click.ClickException(f"{run_dir} already holds a run; pass --resume to continue it "
                                       "or choose another --out")
        trainer = Trainer(model, train_data, val_data, config, run_dir, data_name=data_name,
                          command=invocation(ctx.world_size), ctx=ctx, progress=progress,
                          log=lambda msg: click.echo(msg, err=True))
        try:
            result = trainer.fit(resume=resume)
        except Interrupted as exc:
            if ctx.is_main:
                click.echo(str(exc), err=True)
            teardown(ctx)
            sys.exit(exc.exit_code)
        if ctx.is_main:
            click.echo(f"trained {architecture} on {data_name}: {result.epochs_completed} epochs, "
                       f"{result.global_step} steps -> {run_dir} (recipe: {run_dir / 'recipe.json'})")
    finally:
        teardown(ctx)
