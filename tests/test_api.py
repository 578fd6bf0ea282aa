"""The public API and the catalogue commands: list, create, load, info and their errors."""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

import zoo
from zoo.cli import main
from zoo.errors import CheckpointError, UnknownNameError

CATALOGUE_PLUGIN = """
import zoo
from zoo.registry import PretrainedEntry

@zoo.hookimpl
def register_models(register):
    for name, arch in [("conv-vae-demo", "conv-vae"), ("dense-vae-demo", "dense-vae"),
                       ("dense-vae-demo-2d", "dense-vae"), ("denoising-ae-demo", "denoising-ae")]:
        register(PretrainedEntry(name=name, architecture=arch, config={}, sha256="a" * 64,
                                 repo_id=f"someone/{name}", metadata={"dataset": "demo"}))
"""


@pytest.fixture
def catalogue(plugin_distribution):
    plugin_distribution("zoo-catalogue", CATALOGUE_PLUGIN)


def test_list_models_with_fnmatch_patterns(catalogue):
    assert {"conv-vae-demo", "dense-vae-demo", "dense-vae-demo-2d"} <= set(zoo.list_models("*vae*"))
    two_d = zoo.list_models("dense-vae-*-2d")
    assert "dense-vae-demo-2d" in two_d and all(name.endswith("-2d") for name in two_d)
    assert "denoising-ae-demo" not in zoo.list_models("*vae*")
    assert zoo.list_models("nothing-*") == []


def test_list_architectures_lists_the_built_ins():
    assert {"dense-vae", "conv-vae", "denoising-ae", "colorization-ae"} <= set(zoo.list_architectures())


def test_create_with_preset_and_overrides():
    model = zoo.create("dense-vae", preset="784-500-500-50", latent_dim=8)
    assert model.config.hidden == (500, 500) and model.config.latent_dim == 8 and model.training


def test_unknown_names_suggest_close_ones(catalogue):
    with pytest.raises(UnknownNameError, match="did you mean 'conv-vae'"):
        zoo.create("conv-vea")
    with pytest.raises(UnknownNameError, match="did you mean 'conv-vae-demo'"):
        zoo.load("conv-vae-dmeo")
    with pytest.raises(UnknownNameError, match="no preset 'mnst'.*presets: mnist"):
        zoo.create("conv-vae", preset="mnst")
    with pytest.raises(UnknownNameError, match="did you mean 'dense-vae'"):
        zoo.info("dense-vea")


def test_info_describes_architectures_and_models(catalogue):
    arch = zoo.info("conv-vae")
    assert arch["kind"] == "architecture" and arch["tasks"][0] == "reconstruct"
    assert arch["plugin"] == "conv-vae" and "conv-vae-demo" in arch["pretrained"]
    model = zoo.info("dense-vae-demo")
    assert model["kind"] == "model" and model["repo_id"] == "someone/dense-vae-demo"
    assert model["parameters"] == sum(p.numel() for p in zoo.create("dense-vae").parameters())
    assert model["plugin"] == "zoo-catalogue"


def test_load_accepts_a_weights_file_path_and_device(tmp_path):
    zoo.create("dense-vae", hidden=[16], latent_dim=2).save_pretrained(tmp_path)
    model = zoo.load(tmp_path / "model.safetensors", device="cpu")
    assert model.latent_dim == 2 and not model.training
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(CheckpointError, match="pass a checkpoint folder"):
        zoo.load(tmp_path / "notes.txt")


def test_pretrained_weights_are_checked_against_their_pin(plugin_distribution, tmp_path):
    zoo.create("dense-vae", hidden=[16], latent_dim=2).save_pretrained(tmp_path / "pinned")
    plugin_distribution("zoo-pinned", f"""
import zoo
from pathlib import Path
from zoo.registry import PretrainedEntry

@zoo.hookimpl
def register_models(register):
    register(PretrainedEntry.from_folder("dense-vae-pinned", Path({str(tmp_path / "pinned")!r}), sha256="b" * 64))
""")
    with pytest.raises(CheckpointError, match="has sha256 .* but the registry pins b{64}"):
        zoo.load("dense-vae-pinned")


def test_cli_list_architectures_and_json(catalogue):
    runner = CliRunner()
    result = runner.invoke(main, ["list", "--architectures"])
    assert result.exit_code == 0
    for name in ("dense-vae", "conv-vae", "denoising-ae", "colorization-ae"):
        assert name in result.output
    result = runner.invoke(main, ["list", "*vae-demo*", "--json"])
    rows = json.loads(result.output)
    assert {r["model"] for r in rows} == {"conv-vae-demo", "dense-vae-demo", "dense-vae-demo-2d"}
    assert all(r["dataset"] == "demo" for r in rows)


def test_cli_info_and_plugins(catalogue):
    runner = CliRunner()
    info = json.loads(runner.invoke(main, ["info", "denoising-ae"]).output)
    assert info["tasks"][0] == "denoise"
    result = runner.invoke(main, ["info", "denoising-a"])
    assert result.exit_code == 1 and "did you mean 'denoising-ae'" in result.output and "Traceback" not in result.output
    plugins = json.loads(runner.invoke(main, ["plugins", "--json"]).output)
    by_name = {p["name"]: p for p in plugins}
    assert by_name["zoo-catalogue"]["registered"] == ["conv-vae-demo", "dense-vae-demo", "dense-vae-demo-2d",
                                                       "denoising-ae-demo"]
    assert by_name["conv-vae"]["hooks"] == ["register_architectures", "register_models"]
    text = runner.invoke(main, ["plugins"]).output
    assert "zoo-catalogue  (zoo-catalogue 1.0)" in text


@pytest.mark.parametrize("command", [[], ["list"], ["info"], ["plugins"]])
def test_every_command_has_help(command):
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0 and "Usage: " in result.output


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "zoo.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and zoo.__version__ in out.stdout
