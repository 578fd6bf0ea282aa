"""Model cards: huggingface_hub ModelCard conventions, `zoo card`, and the committed cards in model_cards/."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from huggingface_hub import ModelCard

import zoo
from tests.conftest import REPO
from tests.test_evaluation import LATENT_PLUGIN, dataset
from zoo.cards import card_eval_results, eval_results, render_card, template_path, write_card
from zoo.checkpoint import save_checkpoint, sha256_file
from zoo.cli import main
from zoo.errors import CheckpointError
from zoo.evaluation import evaluate

CARDS = REPO / "model_cards"
TRAINED = sorted(p for p in CARDS.iterdir() if (p / "config.json").is_file()) if CARDS.is_dir() else []


def eval_record(architecture: str, dataset: str, metric_sets: list[str], metrics: dict[str, float]) -> dict:
    """An eval.json as `zoo eval --out` writes it (see zoo.evaluation.runners.evaluate)."""
    head = next(iter(metrics))
    return {
        "model": "tiny", "format": 1, "architecture": architecture, "tasks": [], "metric_sets": metric_sets,
        "dataset": dataset, "split": "test", "data_checksum": "ab" * 32, "num_images": 1024, "binarized": False,
        "seed": 0, "k": None, "metrics": metrics,
        "metric_info": {m: {"description": f"the {m}", "unit": "dB", "higher_is_better": True} for m in metrics},
        "headline": {"name": head, "metric": head, "value": metrics[head], "unit": "dB", "higher_is_better": True},
        "wall_time_s": 1.0, "device": "cpu: x86_64", "command": "zoo eval tiny --out eval.json",
    }


def recipe_record(architecture: str, dataset: str) -> dict:
    """A recipe.json as `zoo train` writes it (see zoo.training.trainer)."""
    return {
        "command": f"zoo train {architecture} --data {dataset} --epochs 2", "status": "complete",
        "architecture": architecture, "model_config": {}, "parameters": 1,
        "train_config": {"epochs": 2, "batch_size": 128, "lr": 0.001, "lr_schedule": "cosine", "seed": 0},
        "data": {"name": dataset, "checksum": "cd" * 32, "train_images": 3328, "val_images": 1024, "val_split": "test",
                 "dynamic_binarization": False},
        "world_size": 1, "backend": None, "ae_zoo_version": zoo.__version__,
        "git": {"commit": "0123456789abcdef0123", "dirty": False},
        "libraries": {"python": "3.11.7", "torch": torch.__version__},
        "device": {"type": "cpu", "name": "x86_64"}, "epochs_completed": 2, "global_step": 52, "wall_time_s": 12.5,
        "final_metrics": {"train": {"loss": 0.5}, "val": {"loss": 0.25}}, "weights_sha256": None, "history": [],
    }


def colorizer_folder(root: Path) -> Path:
    from PIL import Image

    folder = root / "colorization-ae-tiny"
    save_checkpoint(zoo.create("colorization-ae", channels=[4, 8]), folder)
    metrics = {"psnr_colorized": 24.123456789012345, "psnr_gray_baseline": 22.5, "ssim_colorized": 0.9,
               "ssim_gray_baseline": 0.875}
    (folder / "eval.json").write_text(json.dumps(eval_record("colorization-ae", "photos", ["colorize"], metrics)))
    (folder / "recipe.json").write_text(json.dumps(recipe_record("colorization-ae", "photos")))
    Image.new("RGB", (8, 8), (200, 10, 10)).save(folder / "samples.png")
    return folder


def test_card_follows_huggingface_conventions(tmp_path):
    folder = colorizer_folder(tmp_path)
    text = render_card(folder, repo_id="ae-zoo/colorization-ae-tiny")
    card = ModelCard(text)
    data = card.data.to_dict()
    assert data["library_name"] == "ae-zoo" and data["license"] == "apache-2.0"
    assert data["datasets"] == ["photos"]
    assert {"ae-zoo", "autoencoder", "colorization-ae", "colorize", "safetensors"} <= set(data["tags"])
    assert data["pipeline_tag"] == "image-to-image"
    assert data["ae_zoo"]["weights_sha256"] == sha256_file(folder / "model.safetensors")
    # model-index: the eval.json numbers, exactly.
    assert card.data.model_name == "colorization-ae-tiny"
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == \
        json.loads((folder / "eval.json").read_text())["metrics"]
    assert {r.task_type for r in card.data.eval_results} == {"image-to-image"}
    assert {r.dataset_split for r in card.data.eval_results} == {"test"}

    body = card.text
    assert "![samples](samples.png)" in body  # the embedded sample image
    assert 'zoo.load("hf://ae-zoo/colorization-ae-tiny")' in body
    assert "zoo package hf://ae-zoo/colorization-ae-tiny" in body and "zoo serve hf://ae-zoo/colorization-ae-tiny" in body
    assert "model.colorize(torch.rand(8, 1, 32, 32))" in body
    assert "zoo train colorization-ae --data photos --epochs 2" in body and "lr_schedule = cosine" in body
    assert "| `psnr_colorized` | 24.1235 | dB |" in body
    assert "## Limitations" in body and "mate-backgrounds" in body


def test_photo_cards_state_how_small_the_photo_set_is(tmp_path):
    body = ModelCard(render_card(colorizer_folder(tmp_path))).text
    from zoo.data.photos import PHOTOS
    from zoo.data.registry import DATASETS

    recipe = DATASETS["photos"].patches
    per_photo = recipe.crops_per_photo("train")
    train = recipe.split_photos(list(DATASETS["photos"].files))["train"]
    held_out = DATASETS["photos"].validation.groups
    fit = len(train) - held_out
    assert f"{per_photo * fit:,} training patches (32x32) cut from just {fit} photos" in body
    assert f"{per_photo * held_out:,} validation patches from {held_out} others" in body
    assert "8,704 test patches from 34 held-out photos (lomiri-Bridge_by_Sander_Klootwijk" in body
    assert f"The training photos are {len(PHOTOS)} freely licensed photographs from: scikit-image" in body


def test_registered_models_get_the_name_snippet(tmp_path):
    folder = colorizer_folder(tmp_path)
    body = render_card(folder, name="colorization-ae-tiny", repo_id="ae-zoo/colorization-ae-tiny", registered=True)
    assert 'zoo.load("colorization-ae-tiny")' in body and "zoo serve colorization-ae-tiny" in body


def test_card_without_eval_results_says_so(tmp_path):
    folder = tmp_path / "m"
    save_checkpoint(zoo.create("dense-vae", hidden=[8], latent_dim=2), folder)
    card = ModelCard(render_card(folder))
    assert card.data.eval_results is None and "Not evaluated yet" in card.text
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="has no model.safetensors"):
        render_card(folder)


def test_zoo_card_rerenders_from_the_latest_eval_json(tmp_path):
    folder = colorizer_folder(tmp_path)
    result = CliRunner().invoke(main, ["card", str(folder), "--repo-id", "me/tiny"])
    assert result.exit_code == 0, result.output
    assert card_eval_results(folder / "README.md")["psnr_colorized"] == 24.123456789012345

    record = json.loads((folder / "eval.json").read_text())
    record["metrics"]["psnr_colorized"] = 25.5
    (folder / "eval.json").write_text(json.dumps(record))
    assert CliRunner().invoke(main, ["card", str(folder), "--repo-id", "me/tiny"]).exit_code == 0
    assert card_eval_results(folder / "README.md")["psnr_colorized"] == 25.5

    # --eval takes a newer results file and keeps the folder's eval.json in step with the card.
    record["metrics"]["psnr_colorized"] = 26.25
    newer = tmp_path / "newer-eval.json"
    newer.write_text(json.dumps(record))
    assert CliRunner().invoke(main, ["card", str(folder), "--eval", str(newer)]).exit_code == 0
    assert card_eval_results(folder / "README.md")["psnr_colorized"] == 26.25
    assert json.loads((folder / "eval.json").read_text()) == record

    printed = CliRunner().invoke(main, ["card", str(folder), "--stdout"])
    assert printed.exit_code == 0 and printed.output == (folder / "README.md").read_text()


def evaluated_vae_folder(root: Path) -> Path:
    """A tiny dense-vae checkpoint with the eval.json that `zoo eval --out` writes for it."""
    torch.manual_seed(0)
    folder = root / "dense-vae-tiny"
    save_checkpoint(zoo.create("dense-vae", image_size=8, hidden=[8], latent_dim=2), folder)
    record = {"model": str(folder), **evaluate(zoo.load(str(folder)), dataset(1, 8, n=6), k=4),
              "device": "cpu: x86_64", "command": f"zoo eval {folder} --k 4"}
    (folder / "eval.json").write_text(json.dumps(record))
    return folder


def model_index(card: ModelCard) -> dict[str, tuple[str, str | None, float]]:
    return {r.metric_type: (r.task_type, r.task_name, r.metric_value) for r in card.data.eval_results}


def test_each_metric_goes_under_its_metric_sets_task(tmp_path):
    folder = evaluated_vae_folder(tmp_path)
    evaluation = json.loads((folder / "eval.json").read_text())
    assert evaluation["metric_sets"] == ["likelihood", "reconstruction"]
    card = ModelCard(render_card(folder))
    index = model_index(card)
    assert {m: v for m, (_, _, v) in index.items()} == evaluation["metrics"]
    likelihood = ("unconditional-image-generation", "Density estimation (test negative log-likelihood)")
    assert {m: t[:2] for m, t in index.items()} == {
        **{m: likelihood for m in ("nll_iwae", "neg_elbo", "reconstruction_bce", "kl", "active_units")},
        **{m: ("image-to-image", "Image reconstruction")
           for m in ("reconstruct_bce", "reconstruct_mse", "reconstruct_psnr", "reconstruct_ssim")}}
    assert "test NLL (IWAE, k=4)" in card.text and "| `reconstruct_psnr` |" in card.text
    assert "k = 4 importance samples" in card.text  # the likelihood set's note, with this run's k
    assert "The reconstruction metrics compare reconstruct(x) with the test image x itself, on test images " \
           "binarized once with a fixed seed" in card.text


def test_a_plugin_metric_set_reaches_the_card_like_a_standard_one(plugin_distribution, tmp_path):
    plugin_distribution("zoo-latent-metrics", LATENT_PLUGIN)
    folder = evaluated_vae_folder(tmp_path)
    evaluation = json.loads((folder / "eval.json").read_text())
    assert evaluation["metric_sets"] == ["likelihood", "latent-norm", "reconstruction"]
    result = CliRunner().invoke(main, ["card", str(folder), "--repo-id", "me/dense-vae-tiny"])
    assert result.exit_code == 0, result.output
    assert card_eval_results(folder / "README.md") == evaluation["metrics"]
    card = ModelCard.load(folder / "README.md")
    index = model_index(card)
    assert index["latent_norm"] == ("image-feature-extraction", "Latent codes", evaluation["metrics"]["latent_norm"])
    assert index["nll_iwae"][0] == "unconditional-image-generation"
    assert "| `latent_norm` |" in card.text and "mean L2 norm of the latent codes" in card.text
    assert "- The latent norm says nothing about sample quality." in card.text


def test_a_card_names_sets_that_are_no_longer_registered_gracefully(tmp_path):
    folder = colorizer_folder(tmp_path)
    record = json.loads((folder / "eval.json").read_text())
    record["metric_sets"] = ["colorize", "gone-plugin-set"]
    record["metrics"]["gone_metric"] = 0.5
    record["metric_info"]["gone_metric"] = {"description": "from an uninstalled plugin", "unit": "",
                                            "higher_is_better": True}
    (folder / "eval.json").write_text(json.dumps(record))
    tasks = {r.metric_type: (r.task_type, r.task_name) for r in eval_results(record, "colorization-ae-tiny")}
    assert tasks["gone_metric"] == ("image-to-image", None)
    assert tasks["psnr_colorized"] == ("image-to-image", "Image colorization")
    card = ModelCard(render_card(folder))
    # The Hub's model-index keeps one entry per task type and dataset: the metric joins the colorize entry.
    assert model_index(card)["gone_metric"] == ("image-to-image", "Image colorization", 0.5)
    assert "| `gone_metric` | 0.5000 |" in card.text and "compare with the grey-copy baseline" in card.text


def test_the_template_is_the_one_in_model_cards():
    assert template_path().resolve() == (CARDS / "template.md").resolve()
    assert "{{ card_data }}" in template_path().read_text()


@pytest.mark.parametrize("folder", TRAINED, ids=[p.name for p in TRAINED])
def test_committed_card_agrees_with_its_eval_results(folder, tmp_path):
    """Each pretrained model's README.md is the current rendering of its eval.json (`zoo card` re-renders it)."""
    assert (folder / "eval.json").is_file(), f"{folder.name} has no eval.json"
    assert (folder / "README.md").is_file(), f"{folder.name} has no card: run `zoo card {folder}`"
    evaluation = json.loads((folder / "eval.json").read_text())
    card = ModelCard.load(folder / "README.md")
    assert card.data.model_name == folder.name
    assert card_eval_results(folder / "README.md") == evaluation["metrics"]
    assert card.data.to_dict()["ae_zoo"]["weights_sha256"] == sha256_file(folder / "model.safetensors")
    assert card.data.library_name == "ae-zoo" and card.data.license and card.data.datasets and card.data.tags
    images = [p.name for p in folder.iterdir() if p.suffix == ".png"]
    assert images and all(f"]({name})" in card.text for name in images)
    # Nothing hand-edited or stale: the committed text is exactly what `zoo card` writes today.
    copy = Path(shutil.copytree(folder, tmp_path / folder.name))
    write_card(copy, name=folder.name, repo_id=f"ae-zoo/{folder.name}", registered=True)
    assert (copy / "README.md").read_text() == (folder / "README.md").read_text()


def test_benchmark_results_in_applications_json_reach_the_card_with_their_command(tmp_path):
    folder = colorizer_folder(tmp_path)
    entry = {"title": "Compression", "lines": ["42 B at 20.7 dB"], "command": "python benchmarks/compression.py --cards"}
    (folder / "applications.json").write_text(json.dumps({"compression": entry}))
    text = render_card(folder)
    assert "## Compression\n\n- 42 B at 20.7 dB\n\nReproduce: `python benchmarks/compression.py --cards`" in text
    (folder / "applications.json").write_text(json.dumps({"compression": {"title": "x"}}))
    with pytest.raises(zoo.errors.ZooError, match="entry 'compression' needs a title, lines and the command"):
        render_card(folder)


def test_a_likelihood_card_sets_its_headline_next_to_the_zoos_models_measured_the_same_way(tmp_path):
    """The card's comparison table: only models with the same test images, seed and k; this model marked."""
    source = CARDS / "dense-vae-mnist-784-400-20"
    folder = Path(shutil.copytree(source, tmp_path / "my-vae"))
    text = render_card(folder, name="my-vae")
    table = text[text.index("### Next to the zoo's other models"):text.index("\n## ", text.index("### Next"))]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    values = [float(row.split("|")[2].split()[0]) for row in rows]
    assert values == sorted(values), "lower NLL is better: best first"
    assert any(row.startswith("| **my-vae** (this model) | 92.13 nats | 652,824 | cpu: x86_64, 100 epochs,")
               for row in rows)
    # every other row is a bundled model whose eval.json agrees on what makes the numbers comparable
    from zoo.plugins import get_host

    mine = json.loads((source / "eval.json").read_text())
    others = [row.split("`")[1] for row in rows if row.startswith("| `")]
    assert "dense-vae-mnist-784-400-20" in others
    for name in others:
        theirs = json.loads((get_host().registry.model(name).bundled / "eval.json").read_text())
        assert (theirs["k"], theirs["num_images"], theirs["seed"], theirs["data_checksum"]) == \
            (mine["k"], mine["num_images"], mine["seed"], mine["data_checksum"])
    assert len(rows) >= 2
    # a different k measures something else: no table
    evaluation = dict(mine, k=100)
    (folder / "eval.json").write_text(json.dumps(evaluation))
    assert "### Next to the zoo's other models" not in render_card(folder, name="my-vae")
