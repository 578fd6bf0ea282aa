"""Colorization on held-out photos: a model against the grey copy and the train-mean a/b baseline.

``zoo eval``'s colorize set reports PSNR/SSIM against the grey copy. PSNR rewards cautious greyish
colour, so this benchmark adds what says whether a model colours at all, and correctly:

- **PSNR / SSIM** of each method's RGB output against the true colours (mean over patches);
- **colourfulness** (Hasler & Süsstrunk) of the output as % of the truth's (mean over patches of each);
- **a/b correlation**: Pearson's r between the output's and the truth's Lab a (and b), over all pixels.

Methods, each given the same grey patch (BT.601 luma of the true colours):

- ``model``: the model's ``colorize``;
- ``grey copy``: the grey patch itself (a = b = 0);
- ``train-mean a/b``: the grey patch's lightness with, at every pixel, the mean a/b of the patches the
  model was trained on (``--train-split``, default ``fit``): the best constant colouring.

Everything is reported over all patches of the split and per source photo (a patch's label is its
photo). ``evaluate`` also draws the card's sample grid (grey / model / truth rows, one patch per photo:
the first patch cut at 1/4 of the photo's shorter side). ``select`` chooses a training run's epoch and
the decoding temperature (for models that have one) on the **validation** photos, from the weights of
every epoch that ``snapshot`` copied out of a training run while it ran:

    python benchmarks/colorization.py snapshot runs/colorization-ae-photos --epochs 10 \\
        --into runs/colorization-ae-photos/epochs &
    python benchmarks/colorization.py select runs/colorization-ae-photos/epochs --jobs 2 \\
        --temperatures 0.2,0.3,0.38,0.5,0.7,1 --out runs/colorization-ae-photos/selection.json
    OMP_NUM_THREADS=1 python benchmarks/colorization.py evaluate model_cards/colorization-ae-photos \\
        --split test --out model_cards/colorization-ae-photos/colorization_results.json \\
        --figure model_cards/colorization-ae-photos/colorization.png
"""

import argparse
import functools
import json
import math
import multiprocessing
import shutil
import sys
import time
from pathlib import Path

import torch

import zoo
import zoo.data
from zoo.api import checkpoint_folder
from zoo.checkpoint import CONFIG_NAME, WEIGHTS_NAME, sha256_file
from zoo.components.color import rgb_to_gray
from zoo.evaluation.colour import ab_correlation, colourfulness, mean_ab, train_mean_baseline
from zoo.evaluation.metrics import psnr, ssim
from zoo.images import write_grid
from zoo.training.state import POINTER

DATASET = "photos"
#: ``select``: the smallest validation colourfulness (as a fraction of the truth's) a choice may have.
MIN_COLOURFULNESS = 0.55
#: The sample grid shows this patch of each photo: patches are cut 64 per scale, scales 1/16, 1/8, 1/4, 1/2.
FIGURE_PATCH = 128
FIGURE_WIDTH = 12


def photo_names() -> list[str]:
    """Label -> photo file name: labels index the sorted photo names (see zoo.data.patches)."""
    return sorted(zoo.data.get_spec(DATASET).files)


@torch.no_grad()
def outputs(model, images: torch.Tensor, ab: torch.Tensor, batch_size: int = 512) -> dict[str, torch.Tensor]:
    """Float RGB outputs in [0, 1] of every method, and the truth, for uint8 RGB ``images``."""
    truth = images.float() / 255.0
    gray = rgb_to_gray(truth)
    model_out = torch.cat([model.colorize(gray[i:i + batch_size]) for i in range(0, len(gray), batch_size)])
    return {"model": model_out.float(), "grey copy": gray.expand(-1, 3, -1, -1),
            "train-mean a/b": train_mean_baseline(truth, ab).float(), "truth": truth}


def scores(out: dict[str, torch.Tensor], with_ssim: bool = True) -> dict[str, dict[str, float]]:
    """Every method's metrics against the truth, on one set of patches."""
    truth = out["truth"]
    true_colour = float(colourfulness(truth).mean())
    table = {}
    for method, colour in out.items():
        if method == "truth":
            continue
        row = {"psnr": float(psnr(colour, truth).double().mean())}
        if with_ssim:
            row["ssim"] = float(ssim(colour, truth).double().mean())
        row["colourfulness"] = float(colourfulness(colour).mean())
        row["colourfulness_pct_of_truth"] = 100.0 * row["colourfulness"] / true_colour
        r = ab_correlation(colour, truth)
        row["r_a"], row["r_b"] = r["a"], r["b"]
        table[method] = row
    table["truth"] = {"colourfulness": true_colour}
    return table


def evaluate(model, split: str, train_split: str, with_ssim: bool = True) -> dict:
    """Overall and per-photo scores of ``model`` and the baselines on ``split`` of the photos."""
    data = zoo.data.load(DATASET, split)
    ab = mean_ab(zoo.data.load(DATASET, train_split).images)
    out = outputs(model, data.images, ab)
    names = photo_names()
    per_photo = {}
    for label in sorted(set(data.labels.tolist())):
        chosen = data.labels == label
        per_photo[names[label]] = {"patches": int(chosen.sum()),
                                   **scores({k: v[chosen] for k, v in out.items()}, with_ssim)}
    return {"dataset": DATASET, "split": split, "data_checksum": data.checksum, "patches": len(data),
            "photos": len(per_photo), "train_mean_ab": {"split": train_split, "a": float(ab[0]), "b": float(ab[1])},
            "overall": scores(out, with_ssim), "per_photo": per_photo, "_outputs": out, "_labels": data.labels}


def figure(result: dict, path: Path) -> Path:
    """Grey / model / truth rows, one patch (the FIGURE_PATCH-th cut) of each photo of the split, in bands
    of at most FIGURE_WIDTH photos (the last band padded with white)."""
    labels, out = result["_labels"], result["_outputs"]
    firsts = [int(torch.nonzero(labels == label)[0]) for label in sorted(set(labels.tolist()))]
    picks = torch.tensor([first + FIGURE_PATCH for first in firsts])
    width = min(len(picks), FIGURE_WIDTH)
    bands = []
    for start in range(0, len(picks), width):
        band = picks[start:start + width]
        blank = torch.ones((width - len(band), *out["truth"].shape[1:]))
        bands.extend(torch.cat([out[method][band], blank]) for method in ("grey copy", "model", "truth"))
    return write_grid(torch.cat(bands), path, nrow=width, scale=3)


class IdentityColorizer:
    """Stands in for a model where only the baselines are wanted (its "colorization" is the grey copy)."""

    @staticmethod
    def colorize(gray: torch.Tensor) -> torch.Tensor:
        return gray.expand(-1, 3, -1, -1)


@torch.no_grad()
def colorize_at(model, truth: torch.Tensor, temperatures: list, batch_size: int = 256) -> dict:
    """``{temperature: colorized truth}``. For a model with a decoding temperature and bin logits
    (``ab_logits`` / ``annealed_mean``), the network runs once per batch and only the decoding is redone
    per temperature; any other model is simply run (and the only temperature must be None)."""
    from zoo.components.color import gray_lightness, lab_to_rgb
    from zoo_plugins.colorization_ae import AB_SCALE

    gray = rgb_to_gray(truth)
    if not (hasattr(model, "ab_logits") and hasattr(model, "annealed_mean")
            and getattr(model.config, "objective", None) == "classification"):
        if temperatures != [None]:
            raise SystemExit(f"{model.config} has no decoding temperature; drop --temperatures")
        return {None: torch.cat([model.colorize(gray[i:i + batch_size])
                                 for i in range(0, len(gray), batch_size)]).float()}
    pieces = {t: [] for t in temperatures}
    for i in range(0, len(gray), batch_size):
        lightness = gray_lightness(gray[i:i + batch_size])
        logits = model.ab_logits(lightness)
        for t in temperatures:
            ab = model.annealed_mean(logits, t)
            pieces[t].append(lab_to_rgb(torch.cat([lightness, AB_SCALE * ab], dim=1)).float())
    return {t: torch.cat(chunks) for t, chunks in pieces.items()}


def set_temperature(model, temperature: float | None) -> None:
    if temperature is None:
        return
    if not hasattr(model.config, "temperature"):
        raise SystemExit(f"{model.architecture} has no decoding temperature; drop --temperature(s)")
    model.config.temperature = float(temperature)


def no_nan(value):
    """JSON has no NaN: an undefined number (a grey copy's a/b correlation) is written as null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: no_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [no_nan(v) for v in value]
    return value


def public(result: dict) -> dict:
    return {k: v for k, v in result.items() if not k.startswith("_")}


def table(result: dict) -> str:
    lines = [f"{result['split']} split of {DATASET}: {result['patches']:,} patches from {result['photos']} photos",
             f"{'method':<16}{'PSNR':>8}{'SSIM':>8}{'colour %':>10}{'r(a)':>8}{'r(b)':>8}"]
    for method, row in result["overall"].items():
        if method == "truth":
            continue
        lines.append(f"{method:<16}{row['psnr']:8.2f}{row.get('ssim', math.nan):8.4f}"
                     f"{row['colourfulness_pct_of_truth']:10.1f}{row['r_a']:8.3f}{row['r_b']:8.3f}")
    lines.append("per photo (model vs train-mean a/b): PSNR, colour %, r(a), r(b)")
    for name, row in result["per_photo"].items():
        m, t = row["model"], row["train-mean a/b"]
        lines.append(f"  {name:<44}{m['psnr']:7.2f} vs {t['psnr']:6.2f}  {m['colourfulness_pct_of_truth']:6.1f}%"
                     f"  {m['r_a']:6.3f} {m['r_b']:6.3f}")
    return "\n".join(lines)


def card_lines(result: dict) -> list[str]:
    """The card's summary of an ``evaluate`` result: overall rows, the verdict against the targets, per photo."""
    def row(name: str, r: dict) -> str:
        text = (f"{name}: PSNR {r['psnr']:.2f} dB, SSIM {r['ssim']:.3f}, "
                f"colourfulness {r['colourfulness_pct_of_truth']:.0f}% of the truth's")
        undefined = r["r_a"] is None or math.isnan(r["r_a"])  # the grey copy's a/b do not vary
        return text + ("" if undefined else f", r(a) {r['r_a']:.2f}, r(b) {r['r_b']:.2f}")

    overall = result["overall"]
    model, grey, mean = overall["model"], overall["grey copy"], overall["train-mean a/b"]
    colour = model["colourfulness_pct_of_truth"]
    gain = model["psnr"] - mean["psnr"]
    lines = [f"On {result['patches']:,} patches of the {result['photos']} held-out {result['split']} photos:",
             row("model", model), row("grey copy", grey), row("train-mean a/b everywhere", mean),
             f"The model is {gain:.2f} dB {'above' if gain >= 0 else 'below'} the train-mean a/b baseline "
             f"({'at least 1 dB was aimed for: met' if gain >= 1 else 'at least 1 dB was aimed for: missed'}) and "
             f"{abs(model['psnr'] - grey['psnr']):.2f} dB {'below' if model['psnr'] < grey['psnr'] else 'above'} "
             f"the grey copy; its colourfulness is {colour:.0f}% of the truth's "
             f"({'50% was aimed for: met' if colour >= 50 else '50% was aimed for: missed'})."]
    for name, photo in result["per_photo"].items():
        m, g, t = photo["model"], photo["grey copy"], photo["train-mean a/b"]
        lines.append(f"{name}: PSNR model {m['psnr']:.2f} / grey {g['psnr']:.2f} / train-mean {t['psnr']:.2f} dB; "
                     f"colourfulness {m['colourfulness_pct_of_truth']:.0f}% (train-mean "
                     f"{t['colourfulness_pct_of_truth']:.0f}%); r(a) {m['r_a']:.2f}, r(b) {m['r_b']:.2f}")
    return lines


def write_card_entry(folder: Path, lines: list[str], command: str) -> Path:
    """Put the summary into ``folder``'s applications.json, which `zoo card` renders on the card."""
    path = folder / "applications.json"
    entries = json.loads(path.read_text()) if path.is_file() else {}
    entries["colorization"] = {"title": "Colorization on held-out photos", "lines": lines, "command": command}
    path.write_text(json.dumps(entries, indent=2, sort_keys=True) + "\n")
    return path


def evaluate_command(args) -> None:
    model = zoo.load(args.model, device="cpu")
    set_temperature(model, args.temperature)
    start = time.time()
    result = evaluate(model, args.split, args.train_split)
    weights = checkpoint_folder(args.model) / WEIGHTS_NAME
    record = {"model": str(args.model), "weights_sha256": sha256_file(weights),
              "temperature": getattr(model.config, "temperature", None),
              "command": "python benchmarks/colorization.py " + " ".join(sys.argv[1:]),
              "torch_version": torch.__version__, "threads": torch.get_num_threads(),
              "wall_time_s": round(time.time() - start, 1), **public(result)}
    print(table(result))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(no_nan(record), indent=2, allow_nan=False) + "\n")
        print(f"wrote {args.out}")
    if args.figure:
        print(f"wrote {figure(result, Path(args.figure))}")
    if args.card:
        print(f"wrote {write_card_entry(Path(args.card), card_lines(result), record['command'])}")


_BASELINES: dict[str, torch.Tensor] = {}  # a select worker's truth and baselines, computed once per process


def _start_worker(split: str, train_split: str, every: int) -> None:
    torch.set_num_threads(1)
    images = zoo.data.load(DATASET, split).images[::every]
    _BASELINES.update(outputs(IdentityColorizer(), images, mean_ab(zoo.data.load(DATASET, train_split).images)))


def _score_checkpoint(folder: Path, temperatures: list) -> list[dict]:
    """One checkpoint's validation rows, one per temperature (in a worker started by ``_start_worker``)."""
    colourings = colorize_at(zoo.load(folder, device="cpu"), _BASELINES["truth"], temperatures)
    rows = []
    for t in temperatures:
        overall = scores({**_BASELINES, "model": colourings[t]}, with_ssim=False)
        rows.append({"checkpoint": folder.name, "temperature": t, "psnr": overall["model"]["psnr"],
                     "colourfulness_pct_of_truth": overall["model"]["colourfulness_pct_of_truth"],
                     "r_a": overall["model"]["r_a"], "r_b": overall["model"]["r_b"],
                     "train_mean_psnr": overall["train-mean a/b"]["psnr"]})
    return rows


def select_command(args) -> None:
    """Score every epoch folder x temperature on the validation photos; choose by the rule in --help."""
    folders = sorted((p for p in Path(args.epochs).iterdir() if (p / CONFIG_NAME).is_file()),
                     key=lambda p: (int(p.name.rsplit("-", 1)[-1]), p.name))
    if not folders:
        raise SystemExit(f"no checkpoint folders (with config.json) in {args.epochs}")
    temperatures = [float(t) for t in args.temperatures.split(",")] if args.temperatures else [None]
    data = zoo.data.load(DATASET, args.split)
    rows = []
    start_args = (args.split, args.train_split, args.every)
    with multiprocessing.get_context("spawn").Pool(args.jobs, _start_worker, start_args) as pool:
        for scored in pool.imap(functools.partial(_score_checkpoint, temperatures=temperatures), folders):
            rows.extend(scored)
            for row in scored:
                print(f"{row['checkpoint']:>12}  T={row['temperature']}  PSNR {row['psnr']:.3f} (train-mean "
                      f"{row['train_mean_psnr']:.3f})  colour {row['colourfulness_pct_of_truth']:.1f}%  "
                      f"r(a) {row['r_a']:.3f}  r(b) {row['r_b']:.3f}", flush=True)
    eligible = [r for r in rows if r["colourfulness_pct_of_truth"] >= 100 * args.min_colourfulness]
    chosen = (max(eligible, key=lambda r: r["psnr"]) if eligible
              else max(rows, key=lambda r: r["colourfulness_pct_of_truth"]))
    rule = (f"highest validation PSNR among the (checkpoint, temperature) pairs whose validation colourfulness is at "
            f"least {100 * args.min_colourfulness:.0f}% of the truth's (if none is, the most colourful)")
    record = {"epochs": str(args.epochs), "split": args.split, "patches": len(range(0, len(data), args.every)),
              "every": args.every, "data_checksum": data.checksum,
              "rule": rule, "chosen": chosen, "candidates": rows,
              "command": "python benchmarks/colorization.py " + " ".join(sys.argv[1:])}
    print(f"chosen: {chosen['checkpoint']} T={chosen['temperature']} ({rule})")
    if args.out:
        Path(args.out).write_text(json.dumps(no_nan(record), indent=2, allow_nan=False) + "\n")
        print(f"wrote {args.out}")


def _run_ended(run: Path) -> bool:
    """Whether the run wrote its recipe (it does when it completes or stops) after its last checkpoint."""
    recipe, pointer = run / "recipe.json", run / POINTER
    return recipe.is_file() and recipe.stat().st_mtime >= pointer.stat().st_mtime


def snapshot_command(args) -> None:
    """Follow a training run: copy the weights of each finished epoch to INTO/<prefix>epoch-<n>."""
    pointer_path, into = Path(args.run) / POINTER, Path(args.into)
    into.mkdir(parents=True, exist_ok=True)
    copied = {int(p.name.rsplit("-", 1)[-1]) for p in into.glob(f"{args.prefix}epoch-*")
              if (p / WEIGHTS_NAME).is_file()}
    while max(copied, default=0) < args.epochs:
        time.sleep(args.poll)
        if not pointer_path.is_file():  # the run has not finished its first checkpoint yet
            continue
        try:
            pointer = json.loads(pointer_path.read_text())
            if pointer["batch_in_epoch"] != 0 or pointer["epoch"] in copied or pointer["epoch"] == 0:
                if _run_ended(Path(args.run)) and pointer["epoch"] in copied:
                    print(f"{args.run} ended after epoch {pointer['epoch']}, before epoch {args.epochs}", flush=True)
                    return
                continue
            source, target = Path(args.run) / pointer["path"], into / f"{args.prefix}epoch-{pointer['epoch']}"
            staging = into / f".{target.name}.partial"
            staging.mkdir(exist_ok=True)
            for name in (WEIGHTS_NAME, CONFIG_NAME):
                shutil.copyfile(source / name, staging / name)
                if sha256_file(staging / name) != pointer["sha256"][name]:
                    raise OSError(f"{name} changed while it was copied")
        except (OSError, ValueError, KeyError) as error:  # not written yet, or replaced while read: try again
            print(f"waiting for {pointer_path}: {error}", flush=True)
            continue
        staging.rename(target)
        copied.add(pointer["epoch"])
        print(f"copied epoch {pointer['epoch']} to {target}", flush=True)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    ev = commands.add_parser("evaluate", help="score one model and the baselines, overall and per photo")
    ev.add_argument("model", help="a registered model name or a checkpoint folder")
    ev.add_argument("--split", default="test", choices=("test", "val", "fit", "train"))
    ev.add_argument("--train-split", default="fit", choices=("fit", "train"),
                    help="the split whose mean a/b is the train-mean baseline (the one the model was trained on)")
    ev.add_argument("--temperature", type=float, default=None, help="override the model's decoding temperature")
    ev.add_argument("--out", help="write the results as JSON here")
    ev.add_argument("--figure", help="write the sample grid PNG here")
    ev.add_argument("--card", help="write the summary into this model folder's applications.json (then `zoo card`)")
    sel = commands.add_parser("select", help="choose a checkpoint and temperature on the validation photos")
    sel.add_argument("epochs", help="a folder of checkpoint folders named <anything>-<epoch>")
    sel.add_argument("--temperatures", default="", help="comma-separated decoding temperatures to try")
    sel.add_argument("--split", default="val", choices=("val",))
    sel.add_argument("--train-split", default="fit", choices=("fit",))
    sel.add_argument("--min-colourfulness", type=float, default=MIN_COLOURFULNESS)
    sel.add_argument("--every", type=positive_int, default=1,
                     help="score every N-th validation patch (each photo's patches are spread over its scales)")
    sel.add_argument("--jobs", type=positive_int, default=1,
                     help="score this many checkpoints at once (one thread each)")
    sel.add_argument("--out", help="write the candidates and the choice as JSON here")
    snap = commands.add_parser("snapshot", help="while a run trains, keep each epoch's weights for select")
    snap.add_argument("run", help="the training run's output folder")
    snap.add_argument("--epochs", type=positive_int, required=True,
                      help="stop after copying this epoch (or when the run ends before it)")
    snap.add_argument("--into", required=True, help="the folder to copy <prefix>epoch-<n> folders into")
    snap.add_argument("--prefix", default="", help="put before epoch-<n>, to gather several runs in one folder")
    snap.add_argument("--poll", type=float, default=5.0, help="seconds between looks at the run")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    {"evaluate": evaluate_command, "select": select_command, "snapshot": snapshot_command}[args.command](args)


if __name__ == "__main__":
    main()
