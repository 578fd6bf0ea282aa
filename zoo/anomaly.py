"""Anomaly detection a user can deploy: a threshold on a model's anomaly score, calibrated on held-out normal data.

``zoo anomaly fit`` scores held-out *normal* images (a validation split, never the test
split) with the model's ``anomaly-score`` task and sets the threshold at their ``1 - fpr``
quantile, so that about a fraction ``fpr`` of new normal images is flagged. The calibration
is stored as ``anomaly.json`` beside the checkpoint's ``config.json`` and is pinned to the
sha256 of its ``model.safetensors``: a calibration is refused for any other weights.
``zoo anomaly score``, the model card, ``zoo package`` (which puts it into the ``.mar``) and
the served ``anomaly-score`` task read it.

The threshold rule, exactly: with the calibration scores sorted, ``s_1 <= ... <= s_n``, the
threshold is ``s_k`` with ``k = ceil((1 - fpr) * n)`` (the "inverted CDF" quantile, numpy's
``quantile(..., method="inverted_cdf")``): the smallest calibration score that at most
``fpr * n`` calibration scores exceed. An image is **anomalous when its score is greater than
the threshold**; a score that is not a finite number is anomalous too.

Two scores can be calibrated (:data:`SCORES`), both from tasks the model declares, never from
its architecture's name:

- ``anomaly-score`` (the default): the model's own ``anomaly-score`` task;
- ``relative-blurred-error``: ``||B (x - r)||^2 / (||x||^2 + ||r||^2)`` with ``r = decode(encode(x))``
  (for a VAE the decoding of the posterior mean) and ``B`` a 5x5 binomial blur (the outer product of
  ``[1, 4, 6, 4, 1] / 16``, about one pixel of standard deviation, zero padding), per channel. The blur
  forgives a stroke drawn a pixel off; dividing by the images' energy keeps images with little ink
  (a thin "1") from scoring low just for that. On the one-class MNIST benchmark
  (``benchmarks/one_class.py``) it is the score that was chosen on validation data.

Whichever it is, the stored calibration names it, and ``zoo anomaly score`` and the served
``anomaly-score`` task of a calibrated archive compute that score. Reading a calibration needs
only the standard library (this module ships inside every ``.mar``); scoring imports torch.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from zoo.errors import ZooError

CALIBRATION_NAME = "anomaly.json"
FORMAT_VERSION = 1
KIND = "ae-zoo anomaly calibration"
TASK = "anomaly-score"
DEFAULT_FPR = 0.01
DEFAULT_SPLIT = "val"
#: The part of ``train`` held out when a dataset has no validation split (the same rule as zoo.data.validation).
HOLDOUT_FRACTION = 0.1
HOLDOUT_SEED = 0
#: The quantiles of the calibration scores that the file records (besides the threshold).
QUANTILES = (0.0, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 0.999, 1.0)
RULE = "anomalous when score > threshold; a score that is not finite is anomalous"
#: The scores a threshold can be calibrated for; the first is the default.
SCORES = {
    "anomaly-score": "the model's own anomaly-score task",
    "relative-blurred-error": "||B(x - r)||^2 / (||x||^2 + ||r||^2), r = decode(encode(x)), B = 5x5 binomial blur "
                              "([1, 4, 6, 4, 1] / 16 outer product, zero padding) per channel",
}
DEFAULT_SCORE = "anomaly-score"
_BLUR_TAPS = (1.0, 4.0, 6.0, 4.0, 1.0)
QUANTILE_RULE = "threshold = s_k of the sorted calibration scores, k = ceil((1 - fpr) * n) (inverted-CDF quantile)"
_HEX = frozenset("0123456789abcdef")


class CalibrationError(ZooError):
    """A calibration is missing, invalid, for other weights, or cannot be fitted; the message says which."""


# --------------------------------------------------------------------------------------------
# The threshold rule and the verdict


def check_fpr(fpr: Any) -> float:
    """``fpr`` as a float strictly between 0 and 1, or CalibrationError."""
    if isinstance(fpr, bool) or not isinstance(fpr, (int, float)) or not math.isfinite(fpr) or not 0 < fpr < 1:
        raise CalibrationError(f"the false-positive rate must be a number strictly between 0 and 1, got {fpr!r}")
    return float(fpr)


def threshold_index(n: int, fpr: float) -> int:
    """The 0-based position in the sorted scores of the threshold: ``ceil((1 - fpr) * n) - 1``.

    Computed in exact rational arithmetic, so that e.g. fpr = 0.01 and n = 100 give position 98
    (the 99th score), not 99 because of ``(1 - 0.01) * 100 = 99.00000000000001`` in floats.
    """
    from fractions import Fraction

    if n < 1:
        raise CalibrationError("no calibration scores: at least one held-out normal image is needed")
    k = math.ceil((1 - Fraction(fpr)) * n)
    return max(k, 1) - 1


def quantile_threshold(scores: Sequence[float], fpr: float) -> float:
    """The threshold for ``scores`` of held-out normal images (see the module docstring for the rule).

    Every score must be finite: a calibration set whose scores are NaN or infinite is refused.
    """
    fpr = check_fpr(fpr)
    values = [float(s) for s in scores]
    bad = sum(1 for v in values if not math.isfinite(v))
    if bad:
        raise CalibrationError(f"{bad} of {len(values)} calibration scores are not finite numbers; the model "
                               "cannot be calibrated on these images")
    values.sort()
    return values[threshold_index(len(values), fpr)]


def is_anomalous(score: float | None, threshold: float) -> bool:
    """The verdict for one score: above the threshold, or not a finite number (None, NaN, infinity)."""
    if score is None:
        return True
    score = float(score)
    return not (math.isfinite(score) and score <= threshold)


def verdicts(scores: Iterable[float | None], threshold: float) -> list[bool]:
    return [is_anomalous(s, threshold) for s in scores]


def auroc(scores: Sequence[float], anomalous: Sequence[bool]) -> float:
    """Area under the ROC curve of ``scores`` (higher = more anomalous) for the labels ``anomalous``.

    The Mann-Whitney statistic: the probability that a random anomalous item scores higher
    than a random normal one, ties counting one half (average ranks). Needs both classes.
    """
    import numpy as np

    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(anomalous, dtype=bool).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"{len(s)} scores but {len(y)} labels")
    if not np.isfinite(s).all():
        raise ValueError("AUROC needs finite scores")
    positives = int(y.sum())
    negatives = len(y) - positives
    if positives == 0 or negatives == 0:
        raise ValueError("AUROC needs at least one anomalous and one normal item")
    order = np.argsort(s, kind="stable")
    _, first, counts = np.unique(s[order], return_index=True, return_counts=True)
    average = first + (counts + 1) / 2.0  # 1-based average rank of each group of equal scores
    ranks = np.empty(len(s))
    ranks[order] = np.repeat(average, counts)
    return float((ranks[y].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


# --------------------------------------------------------------------------------------------
# The stored calibration


@dataclass(frozen=True)
class Calibration:
    """What ``anomaly.json`` holds; ``to_dict``/``from_dict`` are its file format (``FORMAT_VERSION``)."""

    threshold: float
    fpr: float
    task: str  # the served task whose replies carry the verdict
    weights_sha256: str
    architecture: str
    n: int
    calibration_fpr: float  # the fraction of the calibration scores above the threshold
    data: dict[str, Any] = field(default_factory=dict)  # dataset, split, labels, checksums, selection, note
    quantiles: dict[str, float] = field(default_factory=dict)
    score: str = DEFAULT_SCORE  # which of SCORES the threshold applies to
    score_description: str = ""
    zoo_version: str = ""
    command: str | None = None
    created: str | None = None

    def verdict(self, score: float | None) -> bool:
        return is_anomalous(score, self.threshold)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION, "kind": KIND, "task": self.task, "score": self.score,
            "score_description": self.score_description, "rule": RULE,
            "threshold": self.threshold, "fpr": self.fpr, "calibration_fpr": self.calibration_fpr,
            "quantile_rule": QUANTILE_RULE, "n": self.n, "data": self.data, "quantiles": self.quantiles,
            "model": {"architecture": self.architecture, "weights_sha256": self.weights_sha256},
            "zoo_version": self.zoo_version, "command": self.command, "created": self.created,
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = CALIBRATION_NAME) -> "Calibration":
        """Validate a decoded ``anomaly.json``; every problem names the file and the field."""
        def fail(message: str):
            raise CalibrationError(f"{where}: {message}; recalibrate with `zoo anomaly fit`")

        if not isinstance(data, dict):
            fail("must hold a JSON object")
        if data.get("format_version") != FORMAT_VERSION:
            fail(f"has format_version {data.get('format_version')!r}; this ae-zoo reads version {FORMAT_VERSION}")
        model = data.get("model")
        if not isinstance(model, dict):
            fail("\"model\" must be an object with architecture and weights_sha256")
        sha = model.get("weights_sha256")
        if not isinstance(sha, str) or len(sha) != 64 or not set(sha) <= _HEX:
            fail("\"model.weights_sha256\" must be 64 lowercase hex digits")
        if not isinstance(model.get("architecture"), str):
            fail("\"model.architecture\" must be a string")
        if not isinstance(data.get("task"), str) or not data["task"]:
            fail("\"task\" must name the scalar task the threshold applies to")
        threshold = data.get("threshold")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
            fail(f"\"threshold\" must be a finite number, got {threshold!r}")
        try:
            fpr = check_fpr(data.get("fpr"))
        except CalibrationError as exc:
            fail(f"\"fpr\": {exc}")
        n = data.get("n")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            fail(f"\"n\" must be the number of calibration images (>= 1), got {n!r}")
        quantiles = data.get("quantiles") or {}
        if not isinstance(quantiles, dict) or not all(isinstance(v, (int, float)) for v in quantiles.values()):
            fail("\"quantiles\" must map quantile levels to numbers")
        observed = data.get("calibration_fpr", 0.0)
        if isinstance(observed, bool) or not isinstance(observed, (int, float)):
            fail("\"calibration_fpr\" must be a number")
        if not isinstance(data.get("data", {}), dict):
            fail("\"data\" must be an object")
        if data.get("score", DEFAULT_SCORE) not in SCORES:
            fail(f"\"score\" {data.get('score')!r} is not one this ae-zoo computes ({', '.join(SCORES)})")
        return cls(threshold=float(threshold), fpr=fpr, task=data["task"], weights_sha256=sha,
                   architecture=model["architecture"], n=n, calibration_fpr=float(observed),
                   data=dict(data.get("data") or {}), quantiles={str(k): float(v) for k, v in quantiles.items()},
                   score=data.get("score", DEFAULT_SCORE), score_description=str(data.get("score_description") or ""),
                   zoo_version=str(data.get("zoo_version") or ""),
                   command=data.get("command"), created=data.get("created"))


def _weights_sha256(folder: Path) -> str:
    from zoo.checkpoint import WEIGHTS_NAME

    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise CalibrationError(f"{weights} is missing: a calibration belongs to a checkpoint folder with weights")
    digest = hashlib.sha256()
    with open(weights, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_calibration(path: str | Path) -> Calibration:
    """Parse and validate one ``anomaly.json`` file (without checking it against any weights)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CalibrationError(f"{path} cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise CalibrationError(f"{path} is not UTF-8 text; recalibrate with `zoo anomaly fit`") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise CalibrationError(f"{path} is not valid JSON ({exc}); recalibrate with `zoo anomaly fit`") from None
    return Calibration.from_dict(data, str(path))


def check_weights(calibration: Calibration, folder: str | Path, where: str | None = None) -> None:
    """Refuse a calibration made for other weights than ``folder/model.safetensors``."""
    folder = Path(folder)
    actual = _weights_sha256(folder)
    if actual != calibration.weights_sha256:
        raise CalibrationError(
            f"{where or folder / CALIBRATION_NAME} was calibrated for weights with sha256 "
            f"{calibration.weights_sha256}, but {folder / 'model.safetensors'} has sha256 {actual}: the threshold "
            "does not apply to this model. Recalibrate it with `zoo anomaly fit`")


def load_calibration(folder: str | Path, *, verify: bool = True) -> Calibration | None:
    """The calibration stored in checkpoint ``folder``, or None when it has none.

    With ``verify`` (the default) it must have been made for the folder's own weights
    (sha256 of ``model.safetensors``); otherwise CalibrationError says so.
    """
    folder = Path(folder)
    path = folder / CALIBRATION_NAME
    if not path.exists():
        return None
    calibration = read_calibration(path)
    if verify:
        check_weights(calibration, folder, str(path))
    return calibration


def check_model(calibration: Calibration, model, where: str = CALIBRATION_NAME) -> None:
    """The model must be of the calibrated architecture, declare the calibrated scalar task and what its score needs."""
    from zoo.tasks import TASKS

    if calibration.architecture != model.architecture:
        raise CalibrationError(f"{where} was calibrated for a {calibration.architecture!r} model, not a "
                               f"{model.architecture!r} one")
    if calibration.task not in model.tasks:
        raise CalibrationError(f"{where} calibrates task {calibration.task!r}, which this model does not declare "
                               f"(it declares {', '.join(model.tasks)})")
    if TASKS[calibration.task].output != "scalar":
        raise CalibrationError(f"{where} calibrates task {calibration.task!r}, whose output is not a scalar")
    missing = [t for t in score_needs(calibration.score) if t not in model.tasks]
    if missing:
        raise CalibrationError(f"{where} is for the score {calibration.score!r}, which needs the task(s) "
                               f"{', '.join(missing)} that this model does not declare")


def write_calibration(folder: str | Path, calibration: Calibration) -> Path:
    """Write ``folder/anomaly.json`` atomically (readers never see half a file)."""
    from zoo.checkpoint import atomic_write

    path = Path(folder) / CALIBRATION_NAME
    text = json.dumps(calibration.to_dict(), indent=2) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return path


# --------------------------------------------------------------------------------------------
# Scoring and fitting


def score_needs(score: str) -> tuple[str, ...]:
    """The tasks a model must declare for ``score``."""
    if score not in SCORES:
        raise CalibrationError(f"unknown score {score!r}; choose one of {', '.join(SCORES)}")
    return (TASK,) if score == TASK else ("encode", "decode")


def relative_blurred_error(x, reconstruction):
    """``||B (x - r)||^2 / (||x||^2 + ||r||^2)`` per image (see the module docstring), float32.

    Summed in float64, so the value does not depend on the batch it is computed in.
    """
    import torch
    import torch.nn.functional as F

    x, r = x.double(), reconstruction.double()
    if r.shape != x.shape:
        raise CalibrationError(f"the reconstruction has shape {tuple(r.shape)}, the input {tuple(x.shape)}")
    taps = torch.tensor(_BLUR_TAPS, dtype=torch.float64, device=x.device)
    kernel = torch.outer(taps, taps) / taps.sum() ** 2
    channels = x.shape[1]
    blurred = F.conv2d(r - x, kernel.expand(channels, 1, *kernel.shape), padding=len(_BLUR_TAPS) // 2,
                       groups=channels)
    energy = x.pow(2).flatten(1).sum(1) + r.pow(2).flatten(1).sum(1)
    return (blurred.pow(2).flatten(1).sum(1) / energy.clamp_min(1e-12)).float()


def scorer(model, score: str = DEFAULT_SCORE) -> Callable[[Any], Any]:
    """A function: image batch (N, C, H, W) in [0, 1] on the model's device -> (N,) scores, under no_grad."""
    import torch

    for task in score_needs(score):
        model.task(task)  # UnsupportedTaskError naming what the model declares
    if score == TASK:
        def run(x):
            return model.run_task(TASK, x).reshape(len(x), -1)[:, 0] if len(x) else x.new_zeros(0)
    else:
        def run(x):
            with torch.no_grad():
                return relative_blurred_error(x, model.run_task("decode", model.run_task("encode", x)))
    return run


def score_images(model, images, *, score: str = DEFAULT_SCORE, batch_size: int = 256,
                 progress: Callable[[int], None] | None = None):
    """Float32 numpy scores of ``images`` (uint8 (N, C, H, W) scaled by 1/255, or floats in [0, 1])."""
    import numpy as np
    import torch

    run = scorer(model, score)
    scores = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        x = batch.float().div(255) if batch.dtype == torch.uint8 else batch.float()
        out = run(x.to(model.device)).detach().float().cpu()
        if out.shape != (len(batch),):
            raise CalibrationError(f"score {score!r} gave shape {tuple(out.shape)} for {len(batch)} images, "
                                   "not one number per image")
        scores.append(out)
        if progress is not None:
            progress(len(batch))
    return torch.cat(scores).numpy().astype(np.float32) if scores else np.zeros(0, np.float32)


def summary(scores, threshold: float) -> tuple[dict[str, float], float]:
    """(recorded quantiles of ``scores``, the fraction of them above ``threshold``)."""
    import numpy as np

    values = np.asarray(scores, dtype=np.float64)
    quantiles = {f"{q:g}": float(np.quantile(values, q, method="inverted_cdf")) for q in QUANTILES}
    quantiles["mean"] = float(values.mean())
    quantiles["std"] = float(values.std())
    return quantiles, float((values > threshold).mean())


def holdout_indices(n: int, fraction: float = HOLDOUT_FRACTION, seed: int = HOLDOUT_SEED):
    """A deterministic ``fraction`` of ``range(n)``: the smallest PCG64 keys (seed ``seed``), sorted."""
    import numpy as np

    take = max(1, int(round(n * fraction)))
    keys = np.random.PCG64(seed).random_raw(n)
    return np.sort(np.argsort(keys, kind="stable")[:take]).astype(np.int64)


@dataclass
class HeldOut:
    """The held-out normal images a calibration is fitted on, and what the file records about them."""

    images: Any  # uint8 torch tensor (N, C, H, W)
    record: dict[str, Any]
    notes: list[str]


def held_out_images(dataset: str, split: str = DEFAULT_SPLIT, labels: Sequence[int] | None = None) -> HeldOut:
    """Held-out normal images of ``dataset``: its ``split`` (never ``test``), optionally only ``labels``.

    ``val`` on a dataset without a validation split falls back to a deterministic
    ``HOLDOUT_FRACTION`` of ``train`` (which the model may have been trained on: the notes say so).
    """
    import numpy as np
    import torch

    from zoo.data import load
    from zoo.data.registry import get_spec

    if split == "test":
        raise CalibrationError("refusing to calibrate on the test split: a threshold chosen on the test images "
                               "makes every later test measurement optimistic. Use the validation split (--split "
                               "val), held out from training")
    spec = get_spec(dataset)
    notes: list[str] = []
    from zoo.data import loading

    known = tuple(getattr(loading, "SPLITS", ("train", "test")))
    if split not in known:
        raise CalibrationError(f"unknown split {split!r} for {dataset}; use one of "
                               f"{', '.join(s for s in known if s != 'test')}")
    has_val = getattr(spec, "validation", None) is not None and "val" in known
    record: dict[str, Any] = {"dataset": dataset, "split": split}
    if split == "val" and not has_val:
        full = load(dataset, "train")
        chosen = holdout_indices(len(full))
        images, found = full.images[torch.from_numpy(chosen)], full.labels[torch.from_numpy(chosen)]
        record.update(split="train", holdout={
            "rule": f"{HOLDOUT_FRACTION:g} of train, the smallest PCG64 keys with seed {HOLDOUT_SEED}",
            "images": int(len(chosen)),
            "indices_sha256": hashlib.sha256(np.ascontiguousarray(chosen, dtype="<i8").tobytes()).hexdigest()})
        notes.append(f"{dataset} has no validation split: calibrated on a fixed {HOLDOUT_FRACTION:.0%} of its "
                     "training split instead. If the model was trained on all of train, these images are not "
                     "held out and the threshold flags more new normal images than the FPR says")
        data = full
    else:
        data = load(dataset, split)
        images, found = data.images, data.labels
        if getattr(data, "selection", None):
            record["selection"] = data.selection
        if split in ("train", "fit"):
            notes.append(f"the {split!r} split is what models are usually trained on: if this model saw these "
                         "images, their scores are optimistic and the threshold flags more new normal images "
                         "than the FPR says. Prefer --split val")
    record["checksum"] = data.checksum
    if labels:
        wanted = sorted({int(v) for v in labels})
        keep = torch.isin(found, torch.tensor(wanted, dtype=found.dtype))
        if not bool(keep.any()):
            present = sorted(int(v) for v in torch.unique(found))
            raise CalibrationError(f"no image of {dataset}/{record['split']} has label(s) {wanted}; "
                                   f"its labels are {present}")
        images = images[keep]
        record["labels"] = wanted
    else:
        record["labels"] = None
    images = images.contiguous()
    record["n"] = int(len(images))
    record["images_sha256"] = hashlib.sha256(images.numpy().tobytes()).hexdigest()
    if notes:
        record["note"] = " ".join(notes)
    return HeldOut(images, record, notes)


def calibrate(model, images, fpr: float, *, score: str = DEFAULT_SCORE, batch_size: int = 256,
              progress: Callable[[int], None] | None = None) -> tuple[float, Any]:
    """(threshold, scores) for held-out normal ``images`` at false-positive rate ``fpr``."""
    fpr = check_fpr(fpr)
    scores = score_images(model, images, score=score, batch_size=batch_size, progress=progress)
    return quantile_threshold(scores.tolist(), fpr), scores


def score_description(model, score: str = DEFAULT_SCORE) -> str:
    """What ``score`` is for ``model``: for its own task, the task's description and the method's docstring."""
    from zoo.tasks import TASKS

    if score != TASK:
        return SCORES[score]
    method = getattr(type(model), TASKS[TASK].method, None)
    own = ((getattr(method, "__doc__", None) or "").strip().splitlines() or [""])[0].strip()
    return f"{TASKS[TASK].description}" + (f". {own}" if own else "")


@dataclass
class FitResult:
    path: Path  # the anomaly.json written
    folder: Path  # the checkpoint folder it sits in
    calibration: Calibration
    copied_from: Path | None  # the source folder, when the checkpoint was copied to --out
    notes: list[str]


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _destination(target: str, source: Path, out: str | Path | None, overwrite: bool) -> tuple[Path, bool]:
    """(folder to write anomaly.json into, whether the checkpoint must first be copied there); checked up front."""
    local = Path(target).exists()
    if out is None or _same(Path(out), source):
        if not local:
            raise CalibrationError(
                f"{target} is a registered model: its files ({source}) belong to the installed package or the "
                "Hugging Face cache and are not changed. Pass --out DIR to write a copy of the checkpoint with "
                "its calibration there, then use DIR")
        if not os.access(source, os.W_OK):
            raise CalibrationError(f"{source} is not writable; pass --out DIR to write a calibrated copy elsewhere")
        if (source / CALIBRATION_NAME).exists() and not overwrite:
            raise CalibrationError(f"{source / CALIBRATION_NAME} already exists; pass --overwrite to replace it")
        return source, False
    dest = Path(out)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise CalibrationError(f"--out {dest} exists and is not an empty folder; choose a new folder (the "
                               "checkpoint is copied there with its calibration)")
    parent = dest.parent if dest.parent != Path("") else Path(".")
    if not parent.is_dir():
        raise CalibrationError(f"--out {dest}: the folder {parent} does not exist")
    return dest, True


def _copy_checkpoint(source: Path, dest: Path) -> None:
    """Copy the checkpoint's top-level files (all but a calibration) into ``dest``, all or nothing."""
    parent = dest.parent if dest.parent != Path("") else Path(".")
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=parent))
    try:
        for item in sorted(source.iterdir()):
            if item.is_file() and item.name != CALIBRATION_NAME and not item.name.startswith("."):
                shutil.copy2(item, staging / item.name)
        os.chmod(staging, 0o777 & ~_umask())
        if dest.exists():
            dest.rmdir()  # checked empty before any work
        os.replace(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fit(target: str | Path, dataset: str, *, split: str = DEFAULT_SPLIT, fpr: float = DEFAULT_FPR,
        score: str = DEFAULT_SCORE, labels: Sequence[int] | None = None, out: str | Path | None = None, overwrite: bool = False,
        device: str | None = None, batch_size: int = 256, command: str | None = None,
        progress: Callable[[int], Any] | None = None, log: Callable[[str], None] | None = None) -> FitResult:
    """Calibrate model ``target`` (a checkpoint folder, a registered name or hf:// id) on ``dataset``.

    Everything is checked and computed before anything is written: the calibration goes
    to ``target/anomaly.json`` for a folder, or, with ``out``, into a new folder ``out``
    holding a copy of the checkpoint (the only way for a registered model, whose files
    are not changed).
    """
    import zoo
    from zoo.api import checkpoint_folder

    fpr = check_fpr(fpr)
    score_needs(score)
    if split == "test":
        held_out_images(dataset, split)  # raises the refusal
    target = str(target)
    source = checkpoint_folder(target)
    dest, copy = _destination(target, source, out, overwrite)
    model = zoo.load(source, device=device)
    for task in score_needs(score):
        model.task(task)
    c, h, w = model.input_shape
    held = held_out_images(dataset, split, labels)
    if tuple(held.images.shape[1:]) != tuple(model.input_shape):
        raise CalibrationError(f"{dataset} images are {'x'.join(map(str, held.images.shape[1:]))}, but the model "
                               f"takes {c}x{h}x{w}: calibrate it on the data it models")
    for note in held.notes:
        if log is not None:
            log(f"note: {note}")
    threshold, scores = calibrate(model, held.images, fpr, score=score, batch_size=batch_size, progress=progress)
    quantiles, observed = summary(scores, threshold)
    weights_sha256 = _weights_sha256(source)
    calibration = Calibration(
        threshold=threshold, fpr=fpr, task=TASK, weights_sha256=weights_sha256, architecture=model.architecture,
        n=int(len(scores)), calibration_fpr=observed, data=held.record, quantiles=quantiles,
        score=score, score_description=score_description(model, score), zoo_version=zoo.__version__, command=command,
        created=datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat())
    if copy:
        _copy_checkpoint(source, dest)
        check_weights(calibration, dest)  # the copy holds the very weights that were scored
    path = write_calibration(dest, calibration)
    return FitResult(path, dest, calibration, source if copy else None, held.notes)


__all__ = ["CALIBRATION_NAME", "SCORES", "Calibration", "CalibrationError", "FitResult", "auroc", "calibrate",
           "check_model", "check_weights", "fit", "held_out_images", "is_anomalous", "load_calibration",
           "quantile_threshold", "read_calibration", "relative_blurred_error", "score_images", "scorer", "verdicts",
           "write_calibration"]
