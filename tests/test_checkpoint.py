"""Checkpoint safety: pickle refusal and clear errors for corrupt or mismatched files."""

import json
import pickle
import subprocess
import sys

import pytest
import torch

import zoo
from zoo.errors import CheckpointError


@pytest.fixture
def saved(tmp_path):
    model = zoo.create("dense-vae", hidden=[32], latent_dim=4)
    model.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_config_json_records_architecture_config_and_version(saved):
    data = json.loads((saved / "config.json").read_text())
    assert data["architecture"] == "dense-vae"
    assert data["format_version"] == 1
    assert data["config"]["hidden"] == [32] and data["config"]["latent_dim"] == 4


@pytest.mark.parametrize("suffix", [".pt", ".bin", ".pkl", ".ckpt"])
def test_pickle_files_are_refused_without_unpickling(tmp_path, suffix):
    marker = tmp_path / "unpickled"
    payload = tmp_path / f"weights{suffix}"
    # A pickle whose loading would create `marker`: it must never be opened.
    payload.write_bytes(pickle.dumps(_Touch(str(marker))))
    with pytest.raises(CheckpointError, match="pickle.*arbitrary code"):
        zoo.load(payload)
    assert not marker.exists()


def test_folder_with_only_pickle_weights_is_refused(tmp_path):
    torch.save({"w": torch.zeros(1)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="only pickle files.*pytorch_model.bin"):
        zoo.load(tmp_path)


def test_truncated_safetensors_names_the_file(saved):
    weights = saved / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="model.safetensors is truncated or corrupt"):
        zoo.load(saved)


def test_garbage_header_names_the_file(saved):
    (saved / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="model.safetensors is truncated or corrupt"):
        zoo.load(saved)


def test_config_that_does_not_match_weights(saved):
    data = json.loads((saved / "config.json").read_text())
    data["config"]["latent_dim"] = 5
    (saved / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="does not match the config.*size mismatch"):
        zoo.load(saved)


def test_unknown_architecture_is_named_with_suggestion(saved):
    data = json.loads((saved / "config.json").read_text())
    data["architecture"] = "dense-vea"
    (saved / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="config.json names architecture 'dense-vea'.*did you mean 'dense-vae'"):
        zoo.load(saved)


@pytest.mark.parametrize(
    "text,message",
    [
        ("{not json", "not valid JSON"),
        ('{"architecture": "dense-vae"}', "must hold"),
        ('{"format_version": 99, "architecture": "dense-vae", "config": {}}', "format_version 99"),
        ('{"format_version": 1, "architecture": "dense-vae", "config": {"latent_dim": -2}}', "'latent_dim'"),
    ],
)
def test_bad_config_json(saved, text, message):
    (saved / "config.json").write_text(text)
    with pytest.raises(CheckpointError, match=message):
        zoo.load(saved)


def test_missing_weights(saved):
    (saved / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors is missing"):
        zoo.load(saved)


def test_failed_save_leaves_previous_checkpoint_intact(saved, monkeypatch):
    before = (saved / "model.safetensors").read_bytes()
    model = zoo.create("dense-vae", hidden=[32], latent_dim=4)

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("zoo.checkpoint.save", explode)
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(saved)
    assert (saved / "model.safetensors").read_bytes() == before
    assert not list(saved.glob(".*.tmp"))


SAVE_IN_A_NEW_PROCESS = """
import sys, torch, zoo
torch.manual_seed(0)
model = zoo.create("dense-vae", hidden=[32], latent_dim=4)
model.save_pretrained(sys.argv[1], metadata={"zeta": "1", "alpha": "2", "note": "same", "m": "3"})
"""


def test_saves_are_byte_identical_across_processes(tmp_path):
    """safetensors orders the metadata by a per-process hash seed; the zoo writes it sorted."""
    folders = [tmp_path / f"save{i}" for i in range(4)]
    for folder in folders:
        subprocess.run([sys.executable, "-c", SAVE_IN_A_NEW_PROCESS, str(folder)], check=True)
    for name in ("model.safetensors", "config.json"):
        contents = {(folder / name).read_bytes() for folder in folders}
        assert len(contents) == 1, f"{name} differs between processes"
    header = (folders[0] / "model.safetensors").read_bytes()
    metadata = json.loads(header[8:8 + int.from_bytes(header[:8], "little")])["__metadata__"]
    assert list(metadata) == sorted(metadata) and metadata["architecture"] == "dense-vae"


def test_canonical_header_keeps_tensors_and_is_idempotent(tmp_path):
    from safetensors.torch import load, save

    from zoo.checkpoint import canonical_safetensors

    tensors = {"b": torch.arange(6.0).view(2, 3), "a": torch.ones(5, dtype=torch.int8), "c": torch.zeros(1)}
    raw = save(tensors, metadata={"z": "1", "y": "2", "x": "3"})
    once = canonical_safetensors(raw)
    assert canonical_safetensors(once) == once
    assert int.from_bytes(once[:8], "little") % 8 == 0
    loaded = load(once)
    assert loaded.keys() == tensors.keys() and all(torch.equal(loaded[k], tensors[k]) for k in tensors)


@pytest.mark.parametrize("name", zoo.list_models())
def test_resaving_a_pretrained_model_reproduces_its_pinned_sha256(tmp_path, name):
    from zoo.checkpoint import sha256_file
    from zoo.plugins import get_host

    zoo.load(name).save_pretrained(tmp_path)
    assert sha256_file(tmp_path / "model.safetensors") == get_host().registry.model(name).sha256


class _Touch:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))
