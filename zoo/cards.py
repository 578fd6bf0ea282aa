"""Model cards: a model folder's ``README.md``, rendered with huggingface_hub's ModelCard conventions.

The card is built from what the folder holds: ``config.json`` (architecture and config),
``anomaly.json`` (the anomaly threshold ``zoo anomaly fit`` stored, when there is one),
``eval.json`` (what ``zoo eval --out`` writes: the numbers go to the YAML ``model-index`` exactly,
and to a table), ``recipe.json`` (what ``zoo train`` writes) and any sample images. Everything
model-specific comes from those files, the architecture's declarations and the dataset registry,
so a third-party plugin's models get the same card. The template is ``model_cards/template.md``
(Jinja2, rendered by ``ModelCard.from_template``). huggingface_hub is imported lazily.
"""

import json
from importlib import resources
from pathlib import Path
from typing import Any

from zoo.checkpoint import CONFIG_NAME, WEIGHTS_NAME, read_config, sha256_file
from zoo.errors import CheckpointError, ZooError
from zoo.metrics import fill

CARD_NAME = "README.md"
EVAL_NAME = "eval.json"
RECIPE_NAME = "recipe.json"
APPLICATIONS_NAME = "applications.json"
TEMPLATE_NAME = "template.md"
LIBRARY_NAME = "ae-zoo"
LICENSE = "apache-2.0"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp")

#: Hub dataset ids of the zoo's datasets (others are named by their zoo name).
HUB_DATASETS = {"mnist": "ylecun/mnist", "fashion-mnist": "zalando-datasets/fashion_mnist"}
#: Where the training data comes from and under which terms.
DATA_TERMS = {
    "mnist": "The MNIST training data is by Y. LeCun, C. Cortes and C. J. C. Burges.",
    "fashion-mnist": "The Fashion-MNIST training data is by Zalando Research (MIT licence).",
}
#: model-index task of metrics whose metric set is not registered (any more); others take their set's.
DEFAULT_TASK = ("image-to-image", None)
#: Hub pipeline tag of a model's default task.
PIPELINE_TAGS = {"cluster": "image-classification", "reconstruct": "image-to-image", "denoise": "image-to-image", "colorize": "image-to-image",
                 "sample": "unconditional-image-generation", "encode": "image-feature-extraction"}
#: Captions of the figures ``zoo.demo.figures`` writes, in the order the card shows them.
FIGURE_CAPTIONS = {
    "samples": "Images sampled from the prior.",
    "reconstructions": "Real test images (top row) and their reconstructions from the posterior mean (bottom row).",
    "denoising": "Clean test images (top row), the noisy inputs (middle row) and the model's denoised outputs "
                 "(bottom row).",
    "colorization": "Held-out test patches: the grey input (top row), the model's colorization (middle row) and "
                    "the true colours (bottom row).",
    "manifold": "The learned 2-D latent space: decodings of a 16 x 16 grid over the prior's quantiles.",
    "interpolation": "Decodings along a straight line between the latent codes of two test images.",
    "components": "Samples from each mixture component of the prior, one row per component, by weight.",
    "clusters": "Test images grouped by the cluster (mixture component) the model assigns them to, one row each.",
}


def template_path() -> Path:
    """``model_cards/template.md``: installed in the zoo_model_cards package, or beside zoo/ in a checkout."""
    try:
        path = Path(str(resources.files("zoo_model_cards") / TEMPLATE_NAME))
        if path.is_file():
            return path
    except ModuleNotFoundError:
        pass
    path = Path(__file__).resolve().parents[1] / "model_cards" / TEMPLATE_NAME
    if not path.is_file():
        raise ZooError(f"the model card template ({TEMPLATE_NAME}) is not installed")
    return path


def cell(text: Any) -> str:
    """Text for a Markdown table cell: a literal ``|`` would start a new column."""
    return str(text).replace("|", "\\|")


def read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None


def registered_metric_sets(names: list[str]) -> list:
    """The registered :class:`zoo.metrics.MetricSet` of each name an eval.json lists; names no plugin
    registers any more are left out (their numbers still go to the card, under a generic task)."""
    from zoo.plugins import get_host

    registered = get_host().registry.metric_sets
    return [registered[name] for name in names if name in registered]


def eval_results(evaluation: dict[str, Any], model_name: str) -> list:
    """The eval.json metrics as huggingface_hub EvalResults (values exactly as in the file).

    Each metric's task is that of the registered metric set reporting it (``task_type``/``task_name``);
    a metric of a set that is not registered (any more) goes under ``DEFAULT_TASK``.
    """
    from huggingface_hub import EvalResult

    owners = {metric: metric_set for metric_set in registered_metric_sets(evaluation.get("metric_sets") or [])
              for metric in metric_set.metrics}
    dataset = evaluation.get("dataset") or "unknown"
    info = evaluation.get("metric_info", {})
    results = []
    for metric, value in evaluation["metrics"].items():
        owner = owners.get(metric)
        task_type, task_name = (owner.task_type, owner.task_name) if owner else DEFAULT_TASK
        results.append(EvalResult(
            task_type=task_type, task_name=task_name, dataset_type=HUB_DATASETS.get(dataset, dataset),
            dataset_name=dataset, dataset_split=evaluation.get("split"), metric_type=metric, metric_value=value,
            metric_name=info.get(metric, {}).get("description", metric)))
    return results


def data_terms(dataset: str | None) -> str | None:
    """Who made the training data and under which terms; for photo sets, every source package and its licences."""
    from zoo.data.photos import PHOTOS

    if dataset != "photos":
        return DATA_TERMS.get(dataset or "")
    licences: dict[str, set[str]] = {}
    for photo in PHOTOS:
        licences.setdefault(f"{photo.package} {photo.version}", set()).add(photo.licence)
    listed = "; ".join(f"{package} ({', '.join(sorted(terms))})" for package, terms in licences.items())
    return (f"The training photos are {len(PHOTOS)} freely licensed photographs from: {listed}. Each photo's "
            "licence, credit and sha256 are in ae-zoo's data registry (`zoo.data.photos.PHOTOS`).")


def _patch_split(spec) -> dict[str, Any] | None:
    recipe = getattr(spec, "patches", None)
    if recipe is None:
        return None
    split = recipe.split_photos(list(spec.files))
    per_training_photo = recipe.crops_per_photo("train")
    held_out = spec.validation.groups if spec.validation is not None else 0
    fit_photos = len(split["train"]) - held_out
    return {"size": recipe.size,
            "train_photos": fit_photos, "train_patches": per_training_photo * fit_photos,
            "val_photos": held_out, "val_patches": per_training_photo * held_out,
            "test": [Path(n).stem for n in split["test"]],
            "test_patches": recipe.crops_per_photo("test") * len(split["test"])}


def dataset_limitations(dataset: str | None) -> list[str]:
    """What the training data implies for users, from the dataset registry."""
    if not dataset:
        return ["The training data is not recorded (no recipe.json or eval.json)."]
    from zoo.data.registry import DATASETS

    spec = DATASETS.get(dataset)
    if spec is None:
        return [f"Trained on `{dataset}`, a dataset this ae-zoo does not describe."]
    c, h, w = spec.shape
    notes = [f"Trained only on `{dataset}` ({spec.description}): {c}-channel {h}x{w} images scaled to [0, 1]. "
             "Prepare inputs the same way (see Input / output above); anything else is out of distribution."]
    patches = _patch_split(spec)
    if patches:
        notes.append(
            f"**The photo set is small:** {patches['train_patches']:,} training patches ({patches['size']}x"
            f"{patches['size']}) cut from just {patches['train_photos']} photos, {patches['val_patches']:,} "
            f"validation patches from {patches['val_photos']} others, and {patches['test_patches']:,} "
            f"test patches from {len(patches['test'])} held-out photos ({', '.join(patches['test'])}). The model "
            "has seen few scenes, colours and textures: expect much worse results on other content (faces, "
            "indoor scenes, night scenes, text and graphics), and read the test numbers as describing those "
            f"{len(patches['test'])} photos, not natural images in general.")
    return notes


def _task_snippets(model) -> list[str]:
    from zoo.tasks import TASKS

    lines = ["with torch.no_grad():"]
    shape = ", ".join(str(d) for d in model.input_shape)
    for name in model.tasks:
        task = TASKS[name]
        if task.input == "image":
            args = f"torch.rand(8, {shape})"
        elif task.input == "latent":
            args = "torch.randn(8, model.latent_dim)"
        else:
            args = "16"
        lines.append(f"    out = model.{task.method}({args})  # {name}: {task.description}")
    return ["\n".join(lines)]


def _recipe_rows(recipe: dict[str, Any]) -> list[tuple[str, str]]:
    data = recipe.get("data", {}) or {}
    device = recipe.get("device", {}) or {}
    train = recipe.get("train_config", {}) or {}
    rows = [
        ("Data", f"`{data.get('name')}`: {data.get('train_images', '?'):,} training images, "
                 f"{data.get('val_images', 0):,} validation images ({data.get('val_split') or 'no'} split)"
                 + (", dynamically binarized" if data.get("dynamic_binarization") else "")),
        ("Optimisation", ", ".join(f"{k} = {v}" for k, v in train.items() if v not in (None, "", [], {}))),
        ("Steps", f"{recipe.get('epochs_completed')} epochs, {recipe.get('global_step')} steps "
                  f"({recipe.get('status', 'unknown')})"),
        ("Hardware", f"{device.get('type', '?')}: {device.get('name', '?')}, {recipe.get('world_size', 1)} "
                     f"process(es), {recipe.get('wall_time_s', '?')} s"),
    ]
    final = (recipe.get("final_metrics") or {}).get("val") or {}
    if final:
        rows.append(("Final validation", ", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}"
                                                   for k, v in final.items())))
    versions = recipe.get("libraries") or {}
    rows.append(("Software", f"ae-zoo {recipe.get('ae_zoo_version', '?')}, "
                             + ", ".join(f"{k} {v}" for k, v in versions.items() if k in ("python", "torch"))
                             + (f", git {recipe['git']['commit'][:12]}" if (recipe.get("git") or {}).get("commit")
                                else "")))
    return [(key, cell(value)) for key, value in rows]


def training_budget(recipe: dict[str, Any] | None) -> str:
    """``device, N epochs, wall time`` from a ``recipe.json``, e.g. ``cpu: x86_64, 100 epochs, 31.1 min``."""
    if not recipe:
        return "no training record"
    device = recipe.get("device") or {}
    processes = recipe.get("world_size") or 1
    wall = recipe.get("wall_time_s")
    return (f"{device.get('type', '?')}: {device.get('name', '?')}" + (f" x{processes}" if processes > 1 else "")
            + f", {recipe.get('epochs_completed', '?')} epochs"
            + (f", {wall / 60:.1f} min" if isinstance(wall, (int, float)) else ""))


#: What must agree for two ``eval.json`` headlines to be compared side by side.
COMPARABLE_FIELDS = ("dataset", "split", "data_checksum", "num_images", "binarized", "seed", "k")


def zoo_comparison(folder: str | Path, name: str) -> list[dict[str, Any]]:
    """The model in ``folder`` next to the zoo's bundled models whose headline was measured the same way, best first.

    Same dataset, split, data, image count, binarization, seed, k and headline metric; each row gives
    the model, its headline value, its parameter count and its training budget (``recipe.json``).
    Empty when nothing compares.
    """
    from zoo.plugins import get_host

    folder = Path(folder)
    evaluation = read_json(folder / EVAL_NAME) or {}
    head = evaluation.get("headline")
    if not head:
        return []
    registry = get_host().registry
    others = {other: registry.model(other).bundled for other in registry.list_models() if other != name}
    rows = []
    for model, where in [(name, folder), *others.items()]:
        measured = read_json(where / EVAL_NAME) if where is not None else None
        measured_head = (measured or {}).get("headline") or {}
        if measured_head.get("metric") != head.get("metric") or any(
                measured.get(field) != evaluation.get(field) for field in COMPARABLE_FIELDS):
            continue
        recipe = read_json(where / RECIPE_NAME) or {}
        rows.append({"model": model, "value": measured_head["value"], "this": model == name,
                     "parameters": recipe.get("parameters"), "budget": cell(training_budget(recipe or None))})
    rows.sort(key=lambda row: row["value"], reverse=bool(head.get("higher_is_better")))
    for row in rows:
        row["value"] = f"{row['value']:.2f} {head.get('unit', '')}".strip()
        row["parameters"] = f"{row['parameters']:,}" if isinstance(row["parameters"], int) else "?"
    return rows if len(rows) > 1 else []


def _evaluation_context(evaluation: dict[str, Any]) -> dict[str, Any]:
    info = evaluation.get("metric_info", {})
    rows = [{"metric": m, "value": f"{v:.4f}", "unit": cell(info.get(m, {}).get("unit", "")),
             "description": cell(info.get(m, {}).get("description", ""))} for m, v in evaluation["metrics"].items()]
    head = evaluation.get("headline") or {}
    headline = f"{head.get('name')} = {head.get('value'):.2f} {head.get('unit', '')}".strip() if head else "n/a"
    return {**evaluation, "rows": rows, "headline": headline, "headline_name": head.get("name", "headline"),
            "command": evaluation.get("command") or f"zoo eval {evaluation.get('model', '')}".strip(),
            "device": evaluation.get("device", "unknown device")}


def card_context(folder: str | Path, *, name: str | None = None, repo_id: str | None = None,
                 registered: bool = False) -> tuple[Any, dict[str, Any]]:
    """(ModelCardData, template variables) for the model in ``folder``."""
    from huggingface_hub import ModelCardData

    import zoo
    from zoo.plugins import get_host

    folder = Path(folder)
    if not (folder / WEIGHTS_NAME).is_file():
        raise CheckpointError(f"{folder} has no {WEIGHTS_NAME}: a card describes trained weights")
    weights_sha256 = sha256_file(folder / WEIGHTS_NAME)
    architecture, config = read_config(folder)
    cls = get_host().registry.architecture(architecture)
    model = cls(cls.config_class.from_dict(config))
    name = name or folder.resolve().name
    repo_id = repo_id or f"ORG/{name}"
    evaluation = read_json(folder / EVAL_NAME)
    recipe = read_json(folder / RECIPE_NAME)
    dataset = (evaluation or {}).get("dataset") or ((recipe or {}).get("data") or {}).get("name")
    sets = (evaluation or {}).get("metric_sets") or []

    limitations = dataset_limitations(dataset)
    for metric_set in registered_metric_sets(sets):
        if metric_set.note:
            binarized = ", on test images binarized once with a fixed seed" if evaluation.get("binarized") else ""
            limitations.append(fill(metric_set.note, binarized=binarized, k=evaluation.get("k")))
    split = (evaluation or {}).get("split")
    if recipe and split and (recipe.get("data") or {}).get("val_split") == split:
        final = recipe.get("weights_sha256") == weights_sha256
        limitations.append(
            f"During training, validation used the same `{split}` split that the evaluation reports"
            + ("; the published weights are those of the last epoch, not a checkpoint picked by that score."
               if final else ", so the reported numbers may be optimistic."))
    if recipe and recipe.get("note"):
        limitations.append(f"Training note: {recipe['note']}")
    limitations.append("A small research and teaching model: not validated for any production, medical, "
                       "forensic or safety-relevant use.")

    description = (cls.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
    target = name if registered else f"hf://{repo_id}"
    data = ModelCardData(
        library_name=LIBRARY_NAME, license=LICENSE,
        datasets=[HUB_DATASETS.get(dataset, dataset)] if dataset else None,
        tags=[LIBRARY_NAME, "autoencoder", architecture, *model.tasks, *(["vae"] if "likelihood" in sets else []),
              "safetensors", "pytorch"],
        pipeline_tag=PIPELINE_TAGS.get(model.tasks[0]),
        model_name=name,
        eval_results=eval_results(evaluation, name) if evaluation else None,
        ae_zoo={"architecture": architecture, "weights_sha256": weights_sha256},
    )
    order = list(FIGURE_CAPTIONS)
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES),
                   key=lambda p: (order.index(p.stem) if p.stem in order else len(order), p.name))
    images = [{"path": p.name, "alt": p.stem,
               "caption": FIGURE_CAPTIONS.get(p.stem, p.stem.replace("-", " ").replace("_", " ").capitalize())}
              for p in files]
    c, h, w = model.input_shape
    oc, oh, ow = model.data_shape
    headline = ""
    if evaluation and evaluation.get("headline"):
        head = evaluation["headline"]
        headline = f" {head['name']}: **{head['value']:.2f} {head.get('unit', '')}**".rstrip() + "."
    context = {
        "name": name, "repo_id": repo_id, "registered": registered, "target": target,
        "serve_name": name if registered else repo_id.split("/")[-1],
        "summary": f"A `{architecture}` model ({', '.join(model.tasks)}) trained on `{dataset or 'unknown data'}` "
                   f"with [ae-zoo](https://github.com/ae-zoo/ae-zoo).{headline}",
        "images": images, "architecture": architecture, "description": cell(description), "tasks": list(model.tasks),
        "input_description": f"images ({c}, {h}, {w}) in [0, 1] -> images ({oc}, {oh}, {ow}) in [0, 1]",
        "parameters": sum(p.numel() for p in model.parameters()),
        "weights_sha256": data.ae_zoo["weights_sha256"], "zoo_version": zoo.__version__,
        "config_json": json.dumps(config, indent=2, sort_keys=True),
        "task_snippets": _task_snippets(model), "dataset": dataset,
        "evaluation": _evaluation_context(evaluation) if evaluation else None,
        "recipe": {"command": recipe.get("command", ""), "rows": _recipe_rows(recipe)} if recipe else None,
        "limitations": limitations, "license_text": "the Apache License 2.0",
        "data_license": data_terms(dataset),
        "anomaly": _anomaly_context(folder, model),
        "applications": _applications(folder),
        "comparison": zoo_comparison(folder, name),
    }
    return data, context


def _applications(folder: Path) -> list[dict[str, Any]]:
    """What benchmarks measured with this model (``applications.json``): a title, result lines and the command.

    The file maps a key (e.g. ``compression``) to ``{"title", "lines", "command"}``; a benchmark in
    ``benchmarks/`` writes its entry, so each number on the card says how to reproduce it.
    """
    entries = read_json(folder / APPLICATIONS_NAME) or {}
    for key, entry in entries.items():
        if not (isinstance(entry, dict) and {"title", "lines", "command"} <= entry.keys()):
            raise ZooError(f"{folder / APPLICATIONS_NAME}: entry {key!r} needs a title, lines and the command")
    return [entries[key] for key in sorted(entries)]


def _anomaly_context(folder: Path, model) -> dict[str, Any] | None:
    """The stored anomaly threshold (``anomaly.json``, checked against the weights), or None without one."""
    from zoo.anomaly import CALIBRATION_NAME, check_model, load_calibration

    calibration = load_calibration(folder)
    if calibration is None:
        return None
    check_model(calibration, model, str(folder / CALIBRATION_NAME))
    data = calibration.data
    labels = data.get("labels")
    what = f"`{data.get('dataset', '?')}`, split `{data.get('split', '?')}`" + (
        f", label{'s' if len(labels) > 1 else ''} {', '.join(map(str, labels))}" if labels else "")
    return {"file": CALIBRATION_NAME, "task": calibration.task, "threshold": f"{calibration.threshold:.6g}",
            "fpr": f"{calibration.fpr:g}", "observed": f"{calibration.calibration_fpr:.4g}", "n": calibration.n,
            "data": cell(what), "score": cell(calibration.score), "checksum": data.get("images_sha256", ""),
            "note": cell(data["note"]) if data.get("note") else None,
            "command": calibration.command or f"zoo anomaly fit DIR --data {data.get('dataset', 'DATASET')}"}


def render_card(folder: str | Path, *, name: str | None = None, repo_id: str | None = None,
                registered: bool = False) -> str:
    """The README.md text for the model in ``folder``."""
    from huggingface_hub import ModelCard

    data, context = card_context(folder, name=name, repo_id=repo_id, registered=registered)
    context.pop("card_data", None)
    card = ModelCard.from_template(data, template_path=str(template_path()), **context)
    return str(card).rstrip() + "\n"


def write_card(folder: str | Path, **options: Any) -> Path:
    """Render the card and write it to ``folder/README.md``."""
    from zoo.checkpoint import atomic_write

    folder = Path(folder)
    text = render_card(folder, **options)
    atomic_write(folder / CARD_NAME, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return folder / CARD_NAME


def card_eval_results(card_path: str | Path) -> dict[str, Any]:
    """``{metric_type: value}`` from a card's model-index, parsed by huggingface_hub's ModelCard."""
    from huggingface_hub import ModelCard

    card = ModelCard.load(card_path)
    return {r.metric_type: r.metric_value for r in (card.data.eval_results or [])}


__all__ = ["CARD_NAME", "CONFIG_NAME", "card_context", "card_eval_results", "eval_results", "render_card",
           "template_path", "training_budget", "write_card", "zoo_comparison"]
