"""``zoo compress`` and ``zoo decompress``: images to ``.zae`` files with a model's latent, and back."""

from pathlib import Path

import click

from zoo.cli.app import main

PROGRESS_MIN = 20  # show a progress bar from this many files


def _progress(items: list, label: str):
    from tqdm import tqdm

    return tqdm(items, desc=label, unit="file", disable=len(items) < PROGRESS_MIN)


@main.command("compress")
@click.argument("name", metavar="NAME|DIR")
@click.argument("inputs", nargs=-1, required=True, metavar="IN...")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Folder for the .zae files.")
@click.option("--step", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Latent quantization step, in prior stds (1/64 to 8, rounded to an eighth of an octave) [default: 0.25].")
@click.option("--bits", type=click.FloatRange(min=0, min_open=True), default=None,
              help="About this many bits per kept latent dimension (instead of --step).")
@click.option("--inactive-std", type=click.FloatRange(min=0, min_open=True), default=0.9, show_default=True,
              help="Drop latent dimensions whose posterior std is at least this (inactive units).")
@click.option("--residual-step", type=click.IntRange(1, 255), default=None, metavar="D",
              help="Also code the 8-bit image's residual from the model's prediction, every pixel within D/2 "
                   "(1 = lossless). Without it only the latent is stored.")
@click.option("--lossless", is_flag=True, help="Same as --residual-step 1: decompressing gives back the exact "
                                                "8-bit image (at the model's input size and channels).")
def compress_command(name, inputs, out, step, bits, inactive_std, residual_step, lossless):
    """Compress PNG/JPEG files, folders or globs IN... with model NAME into OUT/<stem>.zae."""
    from zoo.compression import SUFFIX, Codec
    from zoo.compression.images import read_image
    from zoo.compression.quantize import step_code
    from zoo.images import expand_inputs

    if step is not None and bits is not None:
        raise click.UsageError("give --step or --bits, not both")
    if lossless and residual_step not in (None, 1):
        raise click.UsageError("--lossless is --residual-step 1; give one of them")
    residual_step = 1 if lossless else residual_step
    step = 0.25 if step is None and bits is None else step
    try:
        step_code(step, bits)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    paths = expand_inputs(list(inputs))
    codec = Codec.load(name)
    out.mkdir(parents=True, exist_ok=True)
    raw = total = 0
    for path in _progress(paths, "compress"):
        image, shape = read_image(path, codec.model.input_shape)
        (blob,) = codec.compress(image[None], [shape], step=step, bits=bits, inactive_std=inactive_std,
                                 residual_step=residual_step)
        (out / f"{path.stem}{SUFFIX}").write_bytes(blob)
        raw, total = raw + path.stat().st_size, total + len(blob)
    click.echo(f"compressed {len(paths)} image(s) with {name}: {raw} -> {total} bytes "
               f"({total / len(paths):.1f} bytes per image) in {out}")


@main.command("decompress")
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Folder for the PNGs.")
@click.option("--model", "model_name", default=None, metavar="NAME|DIR",
              help="Decode with this model instead of the one named in each file (its weights must match).")
def decompress_command(files, out, model_name):
    """Restore .zae files, folders or globs FILE... to OUT/<stem>.png with the model each file names."""
    from zoo.compression import SUFFIX, Codec
    from zoo.compression.format import unpack
    from zoo.compression.images import write_png
    from zoo.images import expand_inputs

    import zoo

    paths = expand_inputs(list(files), frozenset({SUFFIX}))
    registered = set(zoo.list_models())
    codecs: dict[str, Codec] = {}
    out.mkdir(parents=True, exist_ok=True)
    for path in _progress(paths, "decompress"):
        data = path.read_bytes()
        name = model_name or unpack(data, path)[0].model_name
        if model_name is None and name not in registered:
            # A file must not make us load a path or download from the Hub: only registered names are trusted.
            raise click.ClickException(f"{path}: names the model {name[:80]!r}, which is not a registered "
                                       "pretrained model; pass --model NAME|DIR to decode it with your checkpoint")
        if name not in codecs:
            codecs[name] = Codec.load(name)
        codec = codecs[name]
        record = codec.read(data, path)
        write_png(codec.decode([record])[0], record.shape, out / f"{path.stem}.png")
    click.echo(f"decompressed {len(paths)} file(s) to {out}")
