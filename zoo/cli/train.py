"""``zoo train``: train an architecture on a dataset, resumably; also runs under torchrun.

Exit status: 0 when training completes; 1 on an error (e.g. a NaN loss, named by its step);
130 after SIGINT and 143 after SIGTERM, once the current step has finished and a checkpoint
has been saved (continue with the same command plus ``--resume``).

torch (and so OpenMP) is imported inside the command, after :func:`zoo.resources.passive_openmp_wait`:
idle OpenMP threads then sleep instead of spinning, so two torch processes on the same cores do
not slow each other down many times over.
"""

import json
import shlex
import sys
from pathlib import Path

import click

from zoo import resources
from zoo.cli.app import main

#: --val-split -> (the split trained on, the split validated on)
VAL_SPLITS = {"val": ("fit", "val"), "test": ("train", "test")}
# The trainer's choices (zoo.training.trainer.LR_SCHEDULES, ...), repeated here so that loading this
# command does not import torch; tests/test_training.py checks that they agree.
LR_SCHEDULES = ("constant", "cosine")
PRECISIONS = ("fp32", "bf16")
MEMORY_FORMATS = ("auto", "contiguous", "channels_last")


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
@click.option("--val-limit", type=int, default=None, help="Validate on the first N validation images only.")
@click.option("--val-split", type=click.Choice(sorted(VAL_SPLITS)), default="val", show_default=True,
              help="val: train on the 'fit' split and validate on 'val', both cut from the training set; test: "
                   "train on all of 'train' and validate on 'test' (recorded as such in recipe.json: choosing "
                   "epochs on it makes a later test evaluation optimistic).")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True,
              help="bf16: forward passes under bfloat16 autocast (native bf16 CPUs/GPUs only); changes the numerics.")
@click.option("--compile", "compile_", is_flag=True, help="Run the loss through torch.compile; changes the numerics.")
@click.option("--memory-format", type=click.Choice(MEMORY_FORMATS), default="auto", show_default=True,
              help="auto: channels_last on CPU for models with convolution weights.")
@click.option("--fused-optimizer/--no-fused-optimizer", default=True, show_default=True,
              help="Step torch optimizers with their fused kernel where the device has one.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch threads on CPU [default: $OMP_NUM_THREADS if set, else the CPUs this process may use]. "
                   "Float results depend on it: resume with the same number to stay bit-exact. Next to another "
                   "busy torch process, split the cores (e.g. --threads 1 each on 2 cores).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Run folder [default: runs/ARCH-DATA].")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show the progress bar.")
def train_command(architecture, data_name, preset, overrides, epochs, batch_size, lr, lr_schedule, min_lr_ratio,
                  weight_decay, grad_clip, seed, limit, val_limit, val_split, precision, compile_, memory_format,
                  fused_optimizer, threads, out, resume, device, progress):
    """Train ARCHITECTURE on a dataset; checkpoints every epoch into --out.

    SIGINT/SIGTERM finish the current step, save a checkpoint and exit with 130/143;
    run the same command with --resume to continue bit-exactly. Under
    `torchrun --nproc_per_node=N -m zoo.training ARCH ...` the same options train with DDP.
    """
    resources.passive_openmp_wait()  # before torch loads
    import torch

    import zoo
    import zoo.data
    from zoo.training import Interrupted, TrainConfig, Trainer, setup, teardown

    ctx = setup(device)
    try:
        resources.configure_threads(threads)
        torch.manual_seed(seed)  # the initial weights depend on the seed alone
        model = zoo.create(architecture, preset, **parse_overrides(overrides))
        train_split, eval_split = VAL_SPLITS[val_split]
        train_data = zoo.data.load(data_name, train_split)
        val_data = zoo.data.load(data_name, eval_split)
        if tuple(train_data.images.shape[1:]) != tuple(model.data_shape):
            raise click.ClickException(
                f"{architecture} is configured for data of shape {tuple(model.data_shape)}, but {data_name} has "
                f"{tuple(train_data.images.shape[1:])}; adjust it with --set (e.g. image_channels, image_size)")
        config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, lr_schedule=lr_schedule,
                             min_lr_ratio=min_lr_ratio, weight_decay=weight_decay, grad_clip=grad_clip, seed=seed,
                             train_limit=limit, val_limit=val_limit, precision=precision, compile=compile_,
                             memory_format=memory_format, fused_optimizer=fused_optimizer)
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
