"""``zoo anomaly fit`` and ``zoo anomaly score``: a calibrated anomaly threshold, stored with the model, and verdicts.

The score is the one the calibration names (:data:`zoo.anomaly.SCORES`: the model's declared
``anomaly-score`` task by default), never chosen by architecture name; the threshold and its
rule are :mod:`zoo.anomaly`'s. Inputs are read, checked and batched with the helpers of
:mod:`zoo.cli.local`, exactly as every local command reads them.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shlex
import sys
from pathlib import Path

import click

from zoo.cli.app import main, print_json, table
from zoo.cli.local import INPUTS_HELP, check_outputs, image_inputs, model_options, overwrite_option, read_images, start

SCORE_FORMATS = (".csv", ".json")


@main.group("anomaly")
def anomaly_group() -> None:
    """Anomaly detection: calibrate a threshold on held-out normal data (fit), then flag inputs (score).

    The score is the model's anomaly-score task (higher = more anomalous). An input is
    anomalous when its score is greater than the threshold.
    """


def _fit_command_line(name, dataset, split, labels, fpr, score, out) -> str:
    """The command that makes this calibration again, with every setting spelled out."""
    args = ["zoo", "anomaly", "fit", str(name), "--data", dataset, "--split", split, "--fpr", f"{fpr:g}",
            "--score", score]
    for label in labels:
        args += ["--label", str(label)]
    if out is not None:
        args += ["--out", str(out)]
    return shlex.join(args)


@anomaly_group.command("fit")
@click.argument("name", metavar="NAME|DIR")
@click.option("--data", "dataset", required=True, metavar="DATASET",
              help="The registered dataset of normal images, e.g. mnist (see `zoo data list`).")
@click.option("--split", default="val", show_default=True, metavar="SPLIT",
              help="Held-out split to calibrate on. test is refused. A dataset without a validation split "
                   "falls back to a fixed 10% of train (and says so).")
@click.option("--label", "labels", type=int, multiple=True, metavar="LABEL",
              help="Only images with this label are normal (repeat for several), e.g. --label 8 for a model "
                   "trained on the digit 8 alone. Default: every image of the split.")
@click.option("--fpr", type=float, default=0.01, show_default=True,
              help="Target false-positive rate: the threshold is the (1 - FPR) quantile of the held-out scores.")
@click.option("--score", type=click.Choice(["anomaly-score", "relative-blurred-error"]), default="anomaly-score",
              show_default=True,
              help="What to threshold: the model's own anomaly-score task, or the relative blurred reconstruction "
                   "error ||B(x - r)||^2 / (||x||^2 + ||r||^2) of r = decode(encode(x)) (needs encode and decode; "
                   "the score benchmarks/one_class.py chose on validation data). `zoo anomaly score` and the served "
                   "anomaly-score task then compute the score the calibration names.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None, metavar="DIR",
              help="Write a copy of the checkpoint with its anomaly.json into the new folder DIR (required for a "
                   "registered model, whose files are not changed). Default: into the checkpoint folder itself.")
@overwrite_option
@model_options
def fit_command(name, dataset, split, labels, fpr, score, out, overwrite, device, batch_size, no_progress, as_json):
    """Calibrate model NAME's anomaly threshold on held-out normal images of DATASET.

    Scores every held-out normal image with the model's anomaly-score task, sets the
    threshold at the (1 - FPR) quantile of those scores, and writes anomaly.json (the
    threshold, FPR, score definition, data and its checksums, the weights' sha256, the
    score quantiles, the zoo version and this command) beside config.json. `zoo card`
    shows it, `zoo package` puts it into the .mar, and the served anomaly-score task
    then returns a verdict too.
    """
    import torch

    from zoo import anomaly
    from zoo.cli.local import progress_wanted

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise click.ClickException("--device cuda: this PyTorch sees no CUDA device; use --device cpu")
    from tqdm import tqdm

    bar = tqdm(desc="scoring", unit="img", file=sys.stderr, leave=False,
               disable=not progress_wanted(10**9, not no_progress, sys.stderr))
    try:
        result = anomaly.fit(name, dataset, split=split, fpr=fpr, score=score, labels=labels or None, out=out,
                             overwrite=overwrite, device=device, batch_size=batch_size,
                             command=_fit_command_line(name, dataset, split, labels, fpr, score, out),
                             progress=bar.update, log=lambda text: click.echo(text, err=True))
    finally:
        bar.close()
    c = result.calibration
    if as_json:
        print_json({"path": str(result.path), "folder": str(result.folder),
                    "copied_from": str(result.copied_from) if result.copied_from else None, **c.to_dict()})
        return
    data = c.data
    which = f"{data.get('dataset')}/{data.get('split')}" + (f" labels {data['labels']}" if data.get("labels") else "")
    above = round(c.calibration_fpr * c.n)
    copied = f" (a copy of {result.copied_from})" if result.copied_from else ""
    click.echo(f"{c.score} threshold {c.threshold:.6g} at FPR {c.fpr:g}: {above} of {c.n} held-out images of "
               f"{which} score above it\nwrote {result.path}{copied}")
    if (result.folder / "README.md").is_file():
        click.echo(f"`zoo card {result.folder}` shows the threshold on its model card")


@anomaly_group.command("score", help="Score IN... with model NAME's anomaly-score task and give each a verdict: "
                                     "anomalous when the score is greater than the threshold stored by `zoo "
                                     f"anomaly fit` (or --threshold).\n\n{INPUTS_HELP}")
@image_inputs
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="FILE",
              help="FILE.csv: a header (file, SCORE, anomalous), one row per input; FILE.json: {model, task, score, "
                   "threshold, fpr, threshold_source, rule, files, scores, anomalous}. Without --out the table is "
                   "printed (--json: that JSON object).")
@click.option("--threshold", type=float, default=None,
              help="Use this threshold instead of the stored calibration (needed when the model has none); the "
                   "score is then the model's anomaly-score task unless --score says otherwise.")
@click.option("--score", type=click.Choice(["anomaly-score", "relative-blurred-error"]), default=None,
              help="With --threshold: which score it applies to (default anomaly-score). Without --threshold the "
                   "calibration names the score.")
@overwrite_option
@model_options
def score_command(name, inputs, resize, out, threshold, score, overwrite, device, batch_size, no_progress, as_json):
    import torch

    from zoo import anomaly
    from zoo.api import checkpoint_folder
    from zoo.images import expand_inputs

    if out is not None and out.suffix.lower() not in SCORE_FORMATS:
        raise click.UsageError(f"--out {out}: name a {' or '.join(SCORE_FORMATS)} file")
    if threshold is not None and not math.isfinite(threshold):
        raise click.UsageError(f"--threshold must be a finite number, got {threshold}")
    calibration = None
    if score is not None and threshold is None:
        raise click.UsageError("--score goes with --threshold; without it the stored calibration names the score")
    if threshold is None:
        folder = checkpoint_folder(name)
        calibration = anomaly.load_calibration(folder)
        if calibration is None:
            how = (f"`zoo anomaly fit {name} --data DATASET`" if Path(name).exists() else
                   f"`zoo anomaly fit {name} --data DATASET --out DIR` (a registered model is calibrated into a "
                   "copy) and score with DIR")
            raise click.ClickException(
                f"{name} has no anomaly calibration ({folder / anomaly.CALIBRATION_NAME} is missing): run {how} "
                "first, or pass --threshold T")
    run = start(name, (anomaly.TASK,), device, batch_size, no_progress, as_json)
    if calibration is not None:
        anomaly.check_model(calibration, run.model)
        threshold, score = calibration.threshold, calibration.score
    score = score or anomaly.DEFAULT_SCORE
    compute = anomaly.scorer(run.model, score)
    paths = expand_inputs(list(inputs))
    if out is not None:
        check_outputs([out], overwrite, paths)
    files = read_images(run, paths, resize)
    chunks = []
    with run.bar(len(files), score) as bar:
        for batch, images in files.batches(run.batch_size):
            chunks.append(compute(images.to(run.model.device)).detach().float().cpu().reshape(len(batch)))
            bar.update(len(batch))
    scores = torch.cat(chunks).numpy()
    values = [float(s) for s in scores]  # float32 -> float: exact
    flags = anomaly.verdicts(values, threshold)
    body = {"model": run.name, "task": anomaly.TASK, "score": score, "threshold": threshold,
            "fpr": calibration.fpr if calibration else None,
            "threshold_source": "anomaly.json" if calibration else "--threshold",
            "rule": anomaly.RULE, "files": [str(p) for p in paths],
            "scores": [v if math.isfinite(v) else None for v in values], "anomalous": flags}
    count = sum(flags)
    if out is None:
        if as_json:
            print_json(body)
        else:
            rows = [[str(p), _number(v), "anomalous" if f else "normal"] for p, v, f in zip(paths, values, flags)]
            click.echo(table(rows, ["file", score, "verdict"]))
            click.echo(f"{count} of {len(paths)} anomalous (score > {threshold:.6g}, from {body['threshold_source']})")
        return
    from zoo.images import write_bytes

    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".json":
        write_bytes(out, (json.dumps(body) + "\n").encode())
    else:
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["file", score, "anomalous"])
        writer.writerows([str(p), _number(v), "true" if f else "false"] for p, v, f in zip(paths, scores, flags))
        write_bytes(out, text.getvalue().encode())
    run.report(f"{anomaly.TASK}: {count} of {len(paths)} anomalous (score > {threshold:.6g}, from "
               f"{body['threshold_source']}); wrote {out}",
               {"task": anomaly.TASK, "count": len(paths), "anomalous": count, "threshold": threshold,
                "threshold_source": body["threshold_source"], "out": str(out)})


def _number(value) -> str:
    """The shortest decimal that reads back as the same float32 (nan/inf spelled out)."""
    import numpy as np

    return str(np.float32(value))
