"""The trainer: determinism, bit-exact resume, SIGTERM, the NaN stop, recipes and `zoo train`."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

import zoo
import zoo.data
from zoo.cli import main
from zoo.training import Interrupted, TrainConfig, Trainer, TrainingError
from zoo.training import state as ckpt

SIZE = 8
TINY = {"image_size": SIZE, "hidden": [16], "latent_dim": 2}


def fake_dataset(split: str, n: int = 96, channels: int = 1, seed: int = 0) -> zoo.data.ImageDataset:
    g = torch.Generator().manual_seed(seed + (split == "test"))
    images = torch.randint(0, 256, (n, channels, SIZE, SIZE), generator=g, dtype=torch.uint8)
    return zoo.data.ImageDataset(images, torch.zeros(n, dtype=torch.int64), name="fake", split=split,
                                 checksum="f" * 64)


def tiny_model(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return zoo.create("dense-vae", **{**TINY, **overrides})


def run(out: Path, epochs: int = 3, seed: int = 0, resume: bool = False, model=None, **config):
    model = model if model is not None else tiny_model(seed)
    cfg = TrainConfig(epochs=epochs, batch_size=32, seed=seed, **config)
    trainer = Trainer(model, fake_dataset("train"), fake_dataset("test", 40), cfg, out, data_name="fake",
                      command="test", progress=False, log=lambda _m: None)
    return trainer.fit(resume=resume), model


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_same_command_twice_gives_bit_identical_weights(tmp_path):
    run(tmp_path / "a")
    run(tmp_path / "b")
    assert_same(weights(tmp_path / "a"), weights(tmp_path / "b"))
    run(tmp_path / "c", seed=1)
    assert not torch.equal(weights(tmp_path / "a")["encoder.0.weight"], weights(tmp_path / "c")["encoder.0.weight"])


def _interrupt_at(model, step_to_signal: int, signum=signal.SIGTERM):
    original = model.loss

    def loss(batch, step=None):
        if step == step_to_signal:
            os.kill(os.getpid(), signum)
        return original(batch, step=step)

    model.loss = loss
    return model


# 3 batches per epoch: stop mid-epoch (SIGTERM), and on the last batch of epoch 2 (SIGINT)
@pytest.mark.parametrize(("stop_step", "signum", "code"), [(4, signal.SIGTERM, 143), (5, signal.SIGINT, 130)])
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, stop_step, signum, code):
    run(tmp_path / "full", epochs=3, lr_schedule="cosine")
    model = _interrupt_at(tiny_model(), stop_step, signum)
    with pytest.raises(Interrupted) as info:
        run(tmp_path / "cut", epochs=3, lr_schedule="cosine", model=model)
    assert info.value.exit_code == code
    pointer = json.loads((tmp_path / "cut" / "checkpoint.json").read_text())
    assert pointer["global_step"] == stop_step + 1
    assert json.loads((tmp_path / "cut" / "recipe.json").read_text())["status"] == "interrupted"
    result, _ = run(tmp_path / "cut", epochs=3, lr_schedule="cosine", resume=True)
    assert result.global_step == 9
    assert_same(weights(tmp_path / "full"), weights(tmp_path / "cut"))
    full = json.loads((tmp_path / "full" / "recipe.json").read_text())["history"]
    cut = json.loads((tmp_path / "cut" / "recipe.json").read_text())["history"]
    assert [h["train"] for h in full] == [h["train"] for h in cut]
    assert [h["val"] for h in full] == [h["val"] for h in cut]


def test_resume_refuses_changed_settings(tmp_path):
    run(tmp_path / "r", epochs=1)
    with pytest.raises(TrainingError, match="lr"):
        run(tmp_path / "r", epochs=2, resume=True, lr=5e-4)


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(tmp_path):
    model = tiny_model()
    original = model.loss

    def loss(batch, step=None):
        terms = original(batch, step=step)
        if step == 4:  # the 5th optimiser step, in epoch 2
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    model.loss = loss
    with pytest.raises(TrainingError, match=r"loss is nan at step 5 \(epoch 2, batch 2/3\)"):
        run(tmp_path / "n", epochs=3, model=model)
    folder, state, _, _ = ckpt.read_checkpoint(tmp_path / "n")  # intact and sha256-verified
    assert state["global_step"] == 3 and state["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in weights(folder).values())
    assert_same(weights(folder), weights(tmp_path / "n"))


def test_recipe_records_command_versions_data_and_metrics(tmp_path):
    run(tmp_path / "r", epochs=2)
    recipe = json.loads((tmp_path / "r" / "recipe.json").read_text())
    assert recipe["status"] == "complete" and recipe["command"] == "test"
    assert recipe["ae_zoo_version"] == zoo.__version__
    assert recipe["libraries"]["torch"] == torch.__version__.split("+")[0] or recipe["libraries"]["torch"].startswith(
        torch.__version__.split("+")[0])
    assert "commit" in recipe["git"]
    assert recipe["data"]["checksum"] == "f" * 64 and recipe["data"]["dynamic_binarization"] is True
    assert recipe["device"]["type"] == "cpu"
    assert set(recipe["final_metrics"]["val"]) >= {"loss", "kl", "reconstruction"}
    assert len(recipe["history"]) == 2
    assert recipe["weights_sha256"] == zoo.checkpoint.sha256_file(tmp_path / "r" / "model.safetensors")
    assert zoo.load(tmp_path / "r").config.latent_dim == 2


def test_binarization_follows_the_model_declaration(tmp_path):
    for likelihood, expected in (("bernoulli", True), ("gaussian", False)):
        model = tiny_model(likelihood=likelihood)
        trainer = Trainer(model, fake_dataset("train"), None, TrainConfig(epochs=1, batch_size=32), tmp_path,
                          data_name="fake", progress=False)
        loader = trainer._loader()
        assert loader.dynamic_binarize is expected
        x, _ = next(iter(loader))
        assert bool(((x == 0) | (x == 1)).all()) is expected


def test_optimizer_state_round_trips_without_pickle():
    model = tiny_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.8, 0.9))
    model.loss(torch.rand(4, 1, SIZE, SIZE))["loss"].backward()
    opt.step()
    tensors, rest = ckpt.optimizer_to_tensors(opt)
    json.dumps(rest)  # everything that is not a tensor is plain JSON
    fresh = torch.optim.Adam(model.parameters(), lr=1e-3)
    fresh.load_state_dict(ckpt.optimizer_from_tensors(tensors, rest))
    a, b = opt.state_dict(), fresh.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for index in a["state"]:
        for key, value in a["state"][index].items():
            assert torch.equal(value, b["state"][index][key])


FAKE_DATA = textwrap.dedent("""
    import torch, zoo.data
    def _load(name, split="train", download=False):
        g = torch.Generator().manual_seed(int(split == "test"))
        n = 400 if split == "train" else 64
        images = torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8)
        return zoo.data.ImageDataset(images, torch.zeros(n, dtype=torch.int64), name=name, split=split,
                                     checksum="f" * 64)
""")


def test_cli_train_writes_a_loadable_run(tmp_path, monkeypatch):
    namespace = {}
    exec(FAKE_DATA, namespace)
    monkeypatch.setattr(zoo.data, "load", namespace["_load"])
    out = tmp_path / "cli"
    args = ["train", "dense-vae", "--data", "fake", "--set", "image_size=8", "--set", "hidden=[16]", "--set",
            "latent_dim=2", "--epochs", "2", "--batch-size", "100", "--out", str(out), "--no-progress"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["command"].startswith("zoo train") and recipe["epochs_completed"] == 2
    assert zoo.load(out).config.hidden == (16,)
    again = CliRunner().invoke(main, args)
    assert again.exit_code != 0 and "--resume" in again.output


def test_sigterm_saves_a_valid_checkpoint_exits_143_and_resumes(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(FAKE_DATA + textwrap.dedent("""
        zoo.data.load = _load
        import sys
        from zoo.cli import main
        main(["train", *sys.argv[1:]], prog_name="zoo")
    """))
    out = tmp_path / "run"
    common = ["dense-vae", "--data", "fake", "--set", "image_size=8", "--set", "hidden=[16]", "--set", "latent_dim=2",
              "--batch-size", "8", "--out", str(out), "--no-progress", "--device", "cpu"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, str(script), *common, "--epochs", "100000"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 60
    while not (out / "checkpoint.json").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert (out / "checkpoint.json").exists(), proc.stderr.read() if proc.poll() is not None else "no checkpoint"
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert "SIGTERM received" in stderr and "--resume" in stderr
    folder, state, _, _ = ckpt.read_checkpoint(out)
    assert json.loads((out / "recipe.json").read_text())["status"] == "interrupted"
    assert_same(weights(folder), weights(out))
    zoo.load(out)
    epochs = state["epoch"] + 1
    done = subprocess.run([sys.executable, str(script), *common, "--epochs", str(epochs), "--resume"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["status"] == "complete" and recipe["epochs_completed"] == epochs
