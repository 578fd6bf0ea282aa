"""One-class MNIST: train on one digit, score all ten, and measure how well the score separates the rest.

The standard one-class protocol (Ruff et al. 2018, Deep SVDD; Perera et al. 2019, OCGAN): for
each digit d, a model is trained on MNIST training images of d only; every image of the
evaluation split is scored; the AUROC of "not d" (anomalous) against "d" (normal) is computed,
and the ten AUROCs are averaged. The same run measures two classical baselines on raw pixels
(values in [0, 1], 784-dimensional), fitted on the same training images of d:

- ``knn-l2``: the Euclidean distance to the nearest training image;
- ``pca-20``: the squared error of the reconstruction from the first 20 principal components
  (of the mean-centred training images).

Two protocols; the test split is only read by the second:

- ``--protocol val`` (choosing): train on the digit's images of MNIST ``fit`` (the 55,000 of
  ``train`` that are not ``val``), score MNIST ``val`` (5,000 images held out from ``train``).
  Every candidate model and score in :data:`MODELS` and :data:`SCORES` is measured; the
  candidate with the best mean AUROC is the one the test protocol reports (:data:`CHOSEN`).
- ``--protocol test`` (reporting): train on the digit's images of the whole MNIST ``train``
  split, score the 10,000 ``test`` images, for the chosen candidate (plus, for reference,
  the other scores of the same trained model) and the two baselines.

Each digit's model is trained with the zoo trainer into ``OUT/<protocol>/models/<model>/digit-<d>``
(``OUT`` defaults to ``runs/one_class``) and each digit's AUROCs are saved as soon as they are
measured, so an interrupted run resumes where it stopped. Writes ``benchmarks/one_class_<protocol>.json``
(every AUROC, timings, data checksums, the command) and ``.png`` (a bar chart), and prints the
per-digit table.

    python benchmarks/one_class.py --protocol val     # the selection run
    python benchmarks/one_class.py --protocol test    # the reported run (about 15 minutes on one core)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE.parent / "runs" / "one_class"  # checkpoints and per-digit results (git ignores runs/)
DIGITS = tuple(range(10))
PROTOCOLS = {"val": ("fit", "val"), "test": ("train", "test")}  # protocol -> (training split, scored split)
BASELINES = ("knn-l2", "pca-20")
PCA_COMPONENTS = 20


@dataclass(frozen=True)
class ModelSpec:
    """A candidate model: an existing zoo architecture and config, trained with the zoo trainer."""

    architecture: str
    config: dict[str, Any]
    train: dict[str, Any] = field(default_factory=dict)
    note: str = ""


#: The candidate models, each trained on one digit. Small, so that ten of them train on one CPU core.
MODELS: dict[str, ModelSpec] = {
    "dense-vae-20": ModelSpec("dense-vae", {"hidden": [400], "latent_dim": 20, "activation": "relu"},
                              {"epochs": 50, "batch_size": 128, "lr": 1e-3},
                              "784-400-20 ReLU MLP VAE, Bernoulli likelihood, dynamically binarized training"),
    "denoising-ae-16": ModelSpec("denoising-ae", {"channels": [16, 32], "hidden": 128, "latent_dim": 16,
                                                  "noise_level": 0.3},
                                 {"epochs": 25, "batch_size": 128, "lr": 1e-3, "precision": "bf16"},
                                 "conv AE 16-32 channels, 16-d code, trained to remove Gaussian noise (sigma 0.3)"),
}


def _blur_kernel(taps: int, device) -> torch.Tensor:
    import math

    row = torch.tensor([math.comb(taps - 1, i) for i in range(taps)], dtype=torch.float64, device=device)
    return (torch.outer(row, row) / row.sum() ** 2)[None, None]


def _blurred(e: torch.Tensor, taps: int) -> torch.Tensor:
    c = e.shape[1]
    return F.conv2d(e, _blur_kernel(taps, e.device).expand(c, 1, taps, taps), padding=taps // 2, groups=c)


def _energy(x: torch.Tensor) -> torch.Tensor:
    return x.pow(2).flatten(1).sum(1)


def _reconstruction_scores(model, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every candidate score computed from r = decode(encode(x)) (the posterior mean's decoding for a VAE)."""
    from zoo.anomaly import relative_blurred_error

    r = model.run_task("decode", model.run_task("encode", x))
    e = (r - x).double()
    x64, r64 = x.double(), r.double()
    energy = _energy(x64) + _energy(r64)
    scores = {
        "reconstruction-mse": e.pow(2).flatten(1).mean(1),
        "reconstruction-l1": e.abs().flatten(1).mean(1),
        "blurred-error": _energy(_blurred(e, 5)),
        "relative-error": _energy(e) / energy,
        "relative-blurred-error-3": _energy(_blurred(e, 3)) / energy,
        "relative-blurred-error": relative_blurred_error(x, r),
        "relative-blurred-error-9": _energy(_blurred(e, 9)) / energy,
        "relative-blurred-error-blurred-energy":
            _energy(_blurred(e, 5)) / (_energy(_blurred(x64, 5)) + _energy(_blurred(r64, 5))),
    }
    return {k: v.float() for k, v in scores.items()}


#: The candidate scores of a trained model: name -> (tasks it needs, what it is). "anomaly-score" is the
#: model's own task; the rest are computed from decode(encode(x)).
SCORES: dict[str, tuple[tuple[str, ...], str]] = {
    "anomaly-score": (("anomaly-score",), "the model's own anomaly-score task (VAE: negative ELBO at the "
                                          "posterior mean; denoising AE: mean squared reconstruction error)"),
    "reconstruction-mse": (("encode", "decode"), "mean squared error of r = decode(encode(x))"),
    "reconstruction-l1": (("encode", "decode"), "mean absolute error of r"),
    "blurred-error": (("encode", "decode"), "||B5 (x - r)||^2, B5 the 5x5 binomial blur"),
    "relative-error": (("encode", "decode"), "||x - r||^2 / (||x||^2 + ||r||^2)"),
    "relative-blurred-error-3": (("encode", "decode"), "||B3 (x - r)||^2 / (||x||^2 + ||r||^2)"),
    "relative-blurred-error": (("encode", "decode"), "||B5 (x - r)||^2 / (||x||^2 + ||r||^2) "
                                                     "(zoo.anomaly's relative-blurred-error)"),
    "relative-blurred-error-9": (("encode", "decode"), "||B9 (x - r)||^2 / (||x||^2 + ||r||^2)"),
    "relative-blurred-error-blurred-energy": (("encode", "decode"),
                                              "||B5 (x - r)||^2 / (||B5 x||^2 + ||B5 r||^2)"),
}
#: What the test protocol reports as "the model": chosen on the val protocol alone (see the README's
#: "### Anomaly detection" and one_class.json's "selection"): the best mean validation AUROC.
CHOSEN = ("dense-vae-20", "relative-blurred-error")
#: Scores of the chosen model also measured on test, for reference only (not used to choose anything).
REFERENCE_SCORES = ("anomaly-score", "reconstruction-mse")


# --------------------------------------------------------------------------------------------
# Scores


def model_scores(model, x: torch.Tensor, wanted: list[str], batch_size: int = 1000) -> dict[str, np.ndarray]:
    """The ``wanted`` scores of ``x`` (floats in [0, 1]), each a float32 array; only declared tasks are used."""
    out: dict[str, list[torch.Tensor]] = {name: [] for name in wanted}
    needs_reconstruction = any(SCORES[n][0] == ("encode", "decode") for n in wanted)
    with torch.no_grad():
        for batch in x.split(batch_size):
            batch = batch.to(model.device)
            if "anomaly-score" in wanted:
                out["anomaly-score"].append(model.run_task("anomaly-score", batch).reshape(len(batch)).float().cpu())
            if needs_reconstruction:
                computed = _reconstruction_scores(model, batch)
                for name in wanted:
                    if name in computed:
                        out[name].append(computed[name].cpu())
    return {name: torch.cat(parts).numpy() for name, parts in out.items()}


def knn_distance(train: torch.Tensor, queries: torch.Tensor, chunk: int = 1000) -> np.ndarray:
    """Euclidean distance from each query to its nearest training image (raw pixels, float64)."""
    a = train.reshape(len(train), -1).double()
    a2 = a.pow(2).sum(1)
    out = []
    for block in queries.split(chunk):
        b = block.reshape(len(block), -1).double()
        d2 = b.pow(2).sum(1, keepdim=True) - 2 * b @ a.T + a2
        out.append(d2.min(1).values.clamp_min(0).sqrt())
    return torch.cat(out).numpy()


def pca_error(train: torch.Tensor, queries: torch.Tensor, k: int = PCA_COMPONENTS) -> np.ndarray:
    """Squared error of each query's reconstruction from the first ``k`` principal components of ``train``."""
    a = train.reshape(len(train), -1).double()
    mean = a.mean(0)
    _, _, vt = torch.linalg.svd(a - mean, full_matrices=False)
    basis = vt[:k]
    b = queries.reshape(len(queries), -1).double() - mean
    residual = b - (b @ basis.T) @ basis
    return residual.pow(2).sum(1).numpy()


# --------------------------------------------------------------------------------------------
# One digit


def _cpu_seconds() -> float:
    return time.process_time()


def train_digit(name: str, spec: ModelSpec, data, digit: int, run_dir: Path, log: Callable[..., None]):
    """Train (or resume, or reuse) the digit's model in ``run_dir``; the trained model in eval mode."""
    import zoo
    from zoo.data import ImageDataset
    from zoo.training import TrainConfig, Trainer

    keep = data.labels == digit
    train = ImageDataset(data.images[keep].contiguous(), data.labels[keep].contiguous(), name=data.name,
                         split=data.split, checksum=data.checksum, selection=getattr(data, "selection", None))
    recipe = run_dir / "recipe.json"
    config = TrainConfig(seed=0, **spec.train)
    torch.manual_seed(0)
    model = zoo.create(spec.architecture, **spec.config)
    if recipe.is_file() and json.loads(recipe.read_text()).get("status") == "complete":
        done = json.loads(recipe.read_text())
        same = (done.get("architecture") == spec.architecture and done.get("model_config") == model.config.to_dict()
                and done.get("train_config") == config.to_dict()
                and (done.get("data") or {}).get("train_split") == data.split
                and (done.get("data") or {}).get("train_images") == len(train))
        if not same:
            raise SystemExit(f"{run_dir} holds a model trained with other settings or data; delete it or use "
                             "another --out")
        log(f"  digit {digit}: reusing the trained {name} in {run_dir}")
        return zoo.load(run_dir), 0.0
    command = f"benchmarks/one_class.py: {name} on digit {digit} of mnist/{data.split}"
    trainer = Trainer(model, train, None, config, run_dir, data_name=data.name, command=command, progress=False,
                      log=lambda text: log(f"  digit {digit}: {text}", quiet=text.startswith("epoch ")))
    started = time.time()
    trainer.fit(resume=(run_dir / "checkpoint.json").is_file())
    return zoo.load(run_dir), time.time() - started


def run_digit(digit: int, protocol: str, models: dict[str, list[str]], train_data, eval_images: torch.Tensor,
              eval_labels: np.ndarray, out: Path, log: Callable[..., None]) -> dict[str, Any]:
    from zoo.anomaly import auroc

    anomalous = eval_labels != digit
    normal_train = train_data.images[train_data.labels == digit].float().div(255)
    result: dict[str, Any] = {"digit": digit, "train_images": int(len(normal_train)),
                              "normal": int((~anomalous).sum()), "anomalous": int(anomalous.sum()),
                              "auroc": {}, "seconds": {}, "cpu_seconds": {}}
    wall, cpu = time.time(), _cpu_seconds()
    result["auroc"]["knn-l2"] = auroc(knn_distance(normal_train, eval_images), anomalous)
    result["auroc"]["pca-20"] = auroc(pca_error(normal_train, eval_images), anomalous)
    result["seconds"]["baselines"], result["cpu_seconds"]["baselines"] = time.time() - wall, _cpu_seconds() - cpu
    for name, wanted in models.items():
        wall, cpu = time.time(), _cpu_seconds()
        model, trained = train_digit(name, MODELS[name], train_data, digit,
                                     out / "models" / name / f"digit-{digit}", log)
        model = model.eval()
        result["seconds"][f"{name} training"] = trained
        start_scoring = time.time()
        scores = model_scores(model, eval_images, wanted)
        for score, values in scores.items():
            result["auroc"][f"{name}/{score}"] = auroc(values, anomalous)
        result["seconds"][f"{name} scoring"] = time.time() - start_scoring
        result["cpu_seconds"][name] = _cpu_seconds() - cpu
        result.setdefault("weights_sha256", {})[name] = _sha256(out / "models" / name / f"digit-{digit}" /
                                                                "model.safetensors")
    return result


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------
# Reporting


def method_names(results: list[dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for r in results:
        names += [n for n in r["auroc"] if n not in names]
    return names


def means(results: list[dict[str, Any]]) -> dict[str, float]:
    return {n: float(np.mean([r["auroc"][n] for r in results])) for n in method_names(results)}


def table(results: list[dict[str, Any]], columns: list[str]) -> str:
    header = "| digit | " + " | ".join(columns) + " |"
    lines = [header, "|" + "---|" * (len(columns) + 1)]
    for r in results:
        best = max(r["auroc"][c] for c in columns)
        lines.append(f"| {r['digit']} | " + " | ".join(
            (f"**{r['auroc'][c]:.4f}**" if r["auroc"][c] == best else f"{r['auroc'][c]:.4f}") for c in columns) + " |")
    m = means(results)
    lines.append("| mean | " + " | ".join(f"{m[c]:.4f}" for c in columns) + " |")
    return "\n".join(lines)


def bar_chart(results: list[dict[str, Any]], columns: list[str], path: Path, title: str) -> None:
    """A grouped bar chart (PNG, drawn with Pillow): AUROC per digit and the mean, one bar per method."""
    from PIL import Image, ImageDraw

    colours = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]
    groups = [(str(r["digit"]), [r["auroc"][c] for c in columns]) for r in results]
    m = means(results)
    groups.append(("mean", [m[c] for c in columns]))
    low, high = 0.80, 1.0
    width, height, left, right, top, bottom = 1100, 520, 70, 20, 50, 110
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((left, 15), title, fill="black")
    plot_h = height - top - bottom
    y = lambda v: top + plot_h * (1 - (min(max(v, low), high) - low) / (high - low))  # noqa: E731
    for tick in np.arange(low, high + 1e-9, 0.02):
        draw.line([(left, y(tick)), (width - right, y(tick))], fill=(225, 225, 225))
        draw.text((10, y(tick) - 6), f"{tick:.2f}", fill="black")
    group_w = (width - left - right) / len(groups)
    bar_w = group_w * 0.8 / len(columns)
    for g, (label, values) in enumerate(groups):
        x0 = left + g * group_w + group_w * 0.1
        for i, v in enumerate(values):
            draw.rectangle([x0 + i * bar_w, y(v), x0 + (i + 1) * bar_w - 1, y(low)], fill=colours[i % len(colours)])
        draw.text((x0 + group_w * 0.3, height - bottom + 8), label, fill="black")
    draw.line([(left, top), (left, y(low)), (width - right, y(low))], fill="black")
    for i, c in enumerate(columns):
        lx = left + 10 + (i % 2) * 520
        ly = height - bottom + 35 + (i // 2) * 20
        draw.rectangle([lx, ly, lx + 14, ly + 12], fill=colours[i % len(colours)])
        draw.text((lx + 20, ly), f"{c} (mean {m[c]:.4f})", fill="black")
    draw.text((left, height - 18), f"AUROC, axis from {low:.2f}; bars below {low:.2f} are drawn at {low:.2f}",
              fill=(90, 90, 90))
    image.save(path)


# --------------------------------------------------------------------------------------------
# The run


def plan(protocol: str, chosen: tuple[str, str]) -> dict[str, list[str]]:
    """The models to train and the scores to measure: every candidate on val; the chosen one on test."""
    if protocol == "val":
        return {name: list(SCORES) for name in MODELS}
    name, score = chosen
    return {name: [score] + [s for s in REFERENCE_SCORES if s != score]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", choices=list(PROTOCOLS), default="val",
                        help="val: choose (train on fit, score val); test: report (train on train, score test)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results and per-digit checkpoints go to "
                        "OUT/<protocol>/ (default: %(default)s)")
    parser.add_argument("--report", type=Path, default=HERE, help="where the summary goes: REPORT/one_class_"
                        "<protocol>.json and .png (default: %(default)s)")
    parser.add_argument("--digits", default="0123456789", help="which digits to run, e.g. 28 (default: all)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    torch.set_num_threads(args.threads)
    digits = sorted({int(c) for c in args.digits if c.isdigit()})
    if not digits:
        parser.error("--digits names no digit")

    import zoo
    from zoo.data import load

    out = args.out / args.protocol
    out.mkdir(parents=True, exist_ok=True)
    log_file = (out / "log.txt").open("a")

    def log(text: str, quiet: bool = False) -> None:
        """To stdout (unless ``quiet``: per-epoch lines) and to OUT/<protocol>/log.txt."""
        if not quiet:
            print(text, flush=True)
        log_file.write(text + "\n")
        log_file.flush()

    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__), *(argv or sys.argv[1:])])
    train_split, eval_split = PROTOCOLS[args.protocol]
    train_data = load("mnist", train_split)
    evaluation = load("mnist", eval_split)
    eval_images = evaluation.images.float().div(255)
    eval_labels = evaluation.labels.numpy()
    models = plan(args.protocol, CHOSEN)
    log(f"{command}\nprotocol {args.protocol}: train on mnist/{train_split} ({len(train_data)} images), score "
        f"mnist/{eval_split} ({len(evaluation)} images); models {', '.join(models)}; {args.threads} thread(s)")
    key = hashlib.sha256(json.dumps({"protocol": args.protocol, "models": {n: [MODELS[n].__dict__, s]
                                     for n, s in models.items()}}, sort_keys=True, default=str).encode()).hexdigest()
    started, cpu_started = time.time(), _cpu_seconds()
    results = []
    for digit in digits:
        cache = out / "digits" / f"digit-{digit}.json"
        if cache.is_file():
            saved = json.loads(cache.read_text())
            if saved.get("key") == key:
                log(f"digit {digit}: done before, {cache}")
                results.append(saved["result"])
                continue
        wall = time.time()
        result = run_digit(digit, args.protocol, models, train_data, eval_images, eval_labels, out, log)
        result["wall_seconds"] = time.time() - wall
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"key": key, "result": result}, indent=1) + "\n")
        log(f"digit {digit}: " + ", ".join(f"{n} {v:.4f}" for n, v in result["auroc"].items())
            + f" ({result['wall_seconds']:.0f} s)")
        results.append(result)

    chosen = f"{CHOSEN[0]}/{CHOSEN[1]}"
    m = means(results)
    if args.protocol == "val":
        candidates = {n: v for n, v in m.items() if n not in BASELINES}
        best = max(candidates, key=candidates.get)
        selection = {"rule": "the candidate (model/score) with the highest mean validation AUROC over the digits run",
                     "best": best, "best_mean_auroc": candidates[best], "chosen_in_script": chosen,
                     "agrees": best == chosen, "ranking": sorted(candidates.items(), key=lambda kv: -kv[1])}
        columns = [chosen if chosen in m else best, *BASELINES]
    else:
        selection = {"chosen": chosen, "how": "fixed in the script (CHOSEN) from the val protocol's results, before "
                                              "this run read the test split"}
        columns = [chosen, *BASELINES]
    beats = {b: [r["digit"] for r in results if r["auroc"][columns[0]] > r["auroc"][b]] for b in BASELINES}
    record = {
        "benchmark": "one-class MNIST", "protocol": args.protocol, "train_split": train_split,
        "eval_split": eval_split, "command": command, "digits": digits,
        "data": {"train_checksum": train_data.checksum, "eval_checksum": evaluation.checksum,
                 "train_selection": getattr(train_data, "selection", None),
                 "eval_selection": getattr(evaluation, "selection", None)},
        "models": {n: {**MODELS[n].__dict__, "scores": {s: SCORES[s][1] for s in scores}}
                   for n, scores in models.items()},
        "baselines": {"knn-l2": "Euclidean distance to the nearest training image of the digit (raw pixels in [0, 1])",
                      "pca-20": "squared error of the reconstruction from the first 20 principal components of the "
                                "digit's mean-centred training images"},
        "selection": selection, "mean_auroc": m, "chosen_beats_baseline_on_digits": beats,
        "per_digit": results, "wall_seconds_total": time.time() - started,
        "cpu_seconds_total": _cpu_seconds() - cpu_started, "threads": args.threads,
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "zoo": zoo.__version__, "machine": platform.machine(), "processor": platform.processor()},
    }
    args.report.mkdir(parents=True, exist_ok=True)
    report_json, report_png = args.report / f"one_class_{args.protocol}.json", args.report / f"one_class_{args.protocol}.png"
    report_json.write_text(json.dumps(record, indent=2) + "\n")
    bar_chart(results, columns, report_png,
              f"One-class MNIST ({args.protocol} protocol: train on {train_split}, score {eval_split}): AUROC per "
              "normal digit")
    log("\n" + table(results, columns))
    if args.protocol == "val":
        log("\nmean validation AUROC of every candidate:\n" + "\n".join(f"  {n}: {v:.4f}"
                                                                      for n, v in selection["ranking"]))
        log(f"best: {best} ({candidates[best]:.4f}); the script's CHOSEN: {chosen}")
    log(f"\n{columns[0]} beats knn-l2 on {len(beats['knn-l2'])} and pca-20 on {len(beats['pca-20'])} of "
        f"{len(results)} digits; wrote {report_json} and {report_png} "
        f"({record['wall_seconds_total']:.0f} s wall this run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
