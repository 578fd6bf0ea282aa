"""The trainer: determinism, bit-exact resume, SIGTERM, the NaN stop, recipes, `zoo train`, the model's
training hooks (configure_optimizer, on_train_step_end, on_train_epoch_end) and loss-term checks."""

import json
import math
import os
import shutil
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
from zoo.training import DistContext, Interrupted, TrainConfig, Trainer, TrainingError
from zoo.training import state as ckpt
from zoo.training.batching import TrainBatches
from zoo.training.terms import check_terms, loss_term_problems

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


def run(out: Path, epochs: int = 3, seed: int = 0, resume: bool = False, model=None, sync_every=None, log=None,
        **config):
    model = model if model is not None else tiny_model(seed)
    cfg = TrainConfig(epochs=epochs, batch_size=32, seed=seed, **config)
    trainer = Trainer(model, fake_dataset("train"), fake_dataset("test", 40), cfg, out, data_name="fake",
                      command="test", progress=False, log=log or (lambda _m: None))
    trainer.sync_every = sync_every
    return trainer.fit(resume=resume), model


def recipe_of(out: Path) -> dict:
    return json.loads((out / "recipe.json").read_text())


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


def _same_structure(a, b) -> bool:
    """Equal values of the same types all the way down, tensors compared bit for bit."""
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_structure(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same_structure(x, y) for x, y in zip(a, b))
    return a == b


def test_optimizer_state_of_any_shape_round_trips_without_pickle():
    params = [torch.nn.Parameter(torch.randn(5)), torch.nn.Parameter(torch.randn(3))]

    def closure():
        opt.zero_grad()
        value = sum((p**2).sum() for p in params)
        value.backward()
        return value

    # Rprop: tuples in the param groups; LBFGS: lists of tensors, ints and floats in the state;
    # SGD: two groups, momentum buffers
    for opt in (torch.optim.Rprop(params, etas=(0.4, 1.3)), torch.optim.LBFGS(params, history_size=3),
                torch.optim.SGD([{"params": params[:1]}, {"params": params[1:], "lr": 0.5}], lr=0.1, momentum=0.9)):
        for _ in range(3):
            opt.step(closure)
        tensors, rest = ckpt.optimizer_to_tensors(opt)
        assert rest["class"] == f"torch.optim.{type(opt).__module__.rsplit('.', 1)[1]}.{type(opt).__name__}"
        a, b = opt.state_dict(), ckpt.optimizer_from_tensors(tensors, json.loads(json.dumps(rest)))
        assert a["param_groups"] == b["param_groups"]  # tuples come back as tuples
        assert a["state"].keys() == b["state"].keys()
        assert _same_structure(a["state"], b["state"]), type(opt).__name__  # LBFGS keeps lists with Nones
        fresh = type(opt)(params)
        if len(a["param_groups"]) == 2:
            fresh = torch.optim.SGD([{"params": params[:1]}, {"params": params[1:]}], lr=1.0)
        fresh.load_state_dict(b)


def test_optimizer_state_that_json_cannot_hold_is_named():
    param = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([param], lr=0.1)
    opt.state[param]["odd"] = object()
    with pytest.raises(zoo.errors.CheckpointError, match=r"'state/0/odd' is a object"):
        ckpt.optimizer_to_tensors(opt)


def tuned_model(seed: int = 0, ratio: float = 0.1, events: list | None = None):
    """A dense-vae as a plugin might tune it: SGD with two lr groups, weights mutated in the hooks."""
    cls = type(tiny_model())

    class Tuned(cls):
        def configure_optimizer(self, config):
            return torch.optim.SGD([{"params": self.encoder.parameters(), "lr": config.lr},
                                    {"params": self.decoder.parameters(), "lr": config.lr * ratio}],
                                   momentum=0.9, nesterov=True, weight_decay=1e-4)

        def on_train_step_end(self, step, terms):
            # like a dead-code reset: re-initialise a randomly chosen row with the global RNG
            weight = self.encoder[0].weight
            row = int(torch.randint(weight.shape[0], ()))
            weight[row] = torch.randn(weight.shape[1]) * 0.01
            if events is not None:
                events.append(("step", step, terms, torch.is_grad_enabled(), self.training))

        def on_train_epoch_end(self, epoch):
            bias = self.decoder[2].bias
            bias.add_(torch.randn_like(bias) * 0.01)
            if events is not None:
                events.append(("epoch", epoch, torch.is_grad_enabled(), self.training))

    torch.manual_seed(seed)
    return Tuned(cls.config_class.from_dict(TINY))


def test_param_groups_keep_their_lr_ratio_under_the_cosine_schedule(tmp_path):
    seen = []
    model = tuned_model(ratio=0.1)
    optimizers = []
    configure = model.configure_optimizer

    def configure_and_keep(config):
        optimizers.append(configure(config))
        return optimizers[-1]

    model.configure_optimizer = configure_and_keep
    model.on_train_step_end = lambda step, terms: seen.append([g["lr"] for g in optimizers[0].param_groups])
    result, _ = run(tmp_path / "g", epochs=3, lr=1e-2, lr_schedule="cosine", min_lr_ratio=0.1, model=model)
    assert len(seen) == 9
    assert seen[0] == [1e-2, 1e-3]  # step 1 runs at the configured lrs
    assert all(b == pytest.approx(0.1 * a, rel=1e-12) for a, b in seen)
    firsts = [a for a, _ in seen]
    assert firsts == sorted(firsts, reverse=True) and firsts[-1] < 0.2e-2  # cosine decay, towards 0.1 * lr
    assert result.history[-1]["lrs"] == seen[-1] and result.history[-1]["lr"] == seen[-1][0]


def test_hooks_are_called_after_each_step_and_epoch_with_the_step_terms(tmp_path):
    events = []
    model = tuned_model(events=events)
    original = model.loss
    returned = {}

    def loss(batch, step=None):
        terms = original(batch, step=step)
        if step is None:
            events.append(("val",))
        else:
            returned[step] = {k: float(v.detach()) for k, v in terms.items()}
        return terms

    model.loss = loss
    result, _ = run(tmp_path / "h", epochs=3, model=model)
    steps = [e for e in events if e[0] == "step"]
    assert [e[1] for e in steps] == list(range(1, 10))  # 1-based, once per optimizer step
    for _, step, terms, grad_enabled, training in steps:
        assert terms == returned[step - 1]  # the terms loss(step=step - 1) returned, as Python floats
        assert all(type(v) is float for v in terms.values())
        assert not grad_enabled and training
    assert [e[1] for e in events if e[0] == "epoch"] == [1, 2, 3]
    assert all(not e[2] and e[3] for e in events if e[0] == "epoch")
    kinds = [e[0] for e in events]  # each epoch hook follows its epoch's last step and precedes its validation
    assert kinds == ["step", "step", "step", "epoch", "val"] * 3
    means = {k: sum(e[2][k] for e in steps[6:]) / 3 for k in steps[0][2]}
    assert result.history[-1]["train"] == pytest.approx(means, rel=1e-12)


def test_randomness_in_the_hooks_does_not_shift_the_training_randomness(tmp_path):
    draws = []
    model = tiny_model()
    model.on_train_step_end = lambda step, terms: draws.append(torch.rand(()).item())
    model.on_train_epoch_end = lambda epoch: torch.randn(1000)
    run(tmp_path / "hooked", model=model)
    run(tmp_path / "plain")
    assert_same(weights(tmp_path / "hooked"), weights(tmp_path / "plain"))
    assert len(set(draws)) == 9  # seeded per step: different draws on different steps ...
    again = []
    model = tiny_model()
    model.on_train_step_end = lambda step, terms: again.append(torch.rand(()).item())
    run(tmp_path / "again", model=model)
    assert again == draws  # ... and the same ones in every run with the same seed


# 3 batches per epoch: stop mid-epoch 2, and on its last batch (the epoch hook then runs after resuming)
@pytest.mark.parametrize("stop_step", [4, 5])
def test_custom_optimizer_and_weight_mutating_hooks_resume_bit_exactly(tmp_path, stop_step):
    full, _ = run(tmp_path / "full", epochs=3, lr=1e-2, lr_schedule="cosine", model=tuned_model())
    plain, _ = run(tmp_path / "plain", epochs=3, lr=1e-2, lr_schedule="cosine")
    assert full.weights_sha256 != plain.weights_sha256  # the hooks and SGD were used
    with pytest.raises(Interrupted):
        run(tmp_path / "cut", epochs=3, lr=1e-2, lr_schedule="cosine", model=_interrupt_at(tuned_model(), stop_step))
    _, state, tensors, _ = ckpt.read_checkpoint(tmp_path / "cut")
    assert state["optimizer"]["class"] == "torch.optim.sgd.SGD" and state["base_lrs"] == [1e-2, 1e-3]
    assert any(name.endswith("/momentum_buffer") for name in tensors)
    events = []
    result, _ = run(tmp_path / "cut", epochs=3, lr=1e-2, lr_schedule="cosine", resume=True,
                    model=tuned_model(events=events))
    assert [e[1] for e in events if e[0] == "step"] == list(range(stop_step + 2, 10))
    assert result.global_step == 9
    assert_same(weights(tmp_path / "full"), weights(tmp_path / "cut"))
    full_history = json.loads((tmp_path / "full" / "recipe.json").read_text())["history"]
    cut_history = json.loads((tmp_path / "cut" / "recipe.json").read_text())["history"]
    for key in ("train", "val", "lrs"):
        assert [h[key] for h in full_history] == [h[key] for h in cut_history]


def test_resume_refuses_a_different_optimizer(tmp_path):
    run(tmp_path / "r", epochs=1)  # the default: Adam
    with pytest.raises(TrainingError, match=r"dense-vae\.configure_optimizer\(\) now returns a torch\.optim\.sgd\.SGD, "
                                            r"but the checkpoint holds a torch\.optim\.adam\.Adam"):
        run(tmp_path / "r", epochs=2, resume=True, model=tuned_model())


def test_configure_optimizer_must_return_an_optimizer_over_the_model(tmp_path):
    model = tiny_model()
    model.configure_optimizer = lambda config: [torch.optim.Adam(model.parameters())]
    with pytest.raises(TrainingError, match=r"dense-vae\.configure_optimizer\(\) returned a list, not a torch\.optim"):
        run(tmp_path / "a", epochs=1, model=model)
    model.configure_optimizer = lambda config: torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))])
    with pytest.raises(TrainingError, match="not a parameter of the model"):
        run(tmp_path / "b", epochs=1, model=model)


def _bad_terms(kind: str):
    def spoil(terms, batch):
        if kind == "non-scalar":
            terms["kl"] = torch.zeros(len(batch))
        elif kind == "missing loss":
            terms.pop("loss")
        elif kind == "non-dict":
            return terms["loss"]
        elif kind == "non-tensor":
            terms["kl"] = 0.5
        elif kind == "detached loss":
            terms["loss"] = terms["loss"].detach()
        return terms
    return spoil


@pytest.mark.parametrize(("kind", "message"), [
    ("non-scalar", r"dense-vae\.loss\(\) returned term 'kl' with shape \(32,\); every loss term must be a scalar "
                   r"\(reduce it, e\.g\. with \.mean\(\)\)"),
    ("missing loss", r"dense-vae\.loss\(\) returned no 'loss' term \(it returned 'reconstruction', 'kl', 'neg_elbo'\)"),
    ("non-dict", r"dense-vae\.loss\(\) returned a tensor of shape \(\), not a dict of named scalar terms"),
    ("non-tensor", r"dense-vae\.loss\(\) returned term 'kl' as a float, not a tensor"),
    ("detached loss", r"dense-vae\.loss\(\) returned a 'loss' that does not require grad"),
], ids=["non-scalar", "missing-loss", "non-dict", "non-tensor", "detached-loss"])
def test_a_malformed_loss_stops_training_naming_the_term(tmp_path, kind, message):
    model = tiny_model()
    original, spoil = model.loss, _bad_terms(kind)
    model.loss = lambda batch, step=None: spoil(original(batch, step=step), batch)
    with pytest.raises(TrainingError, match=message):
        run(tmp_path / "bad", epochs=1, model=model)


def test_a_malformed_validation_loss_is_named_too(tmp_path):
    model = tiny_model()
    original, spoil = model.loss, _bad_terms("non-scalar")
    model.loss = lambda batch, step=None: original(batch, step=step) if step is not None else spoil(
        original(batch), batch)
    with pytest.raises(TrainingError, match=r"returned term 'kl' with shape \(40,\)"):
        run(tmp_path / "bad", epochs=1, model=model)


def test_loss_term_problems_lists_every_problem_without_raising():
    good = {"loss": torch.ones((), requires_grad=True) * 2, "kl": torch.ones(1, 1)}
    assert loss_term_problems("x-ae", good) == []
    assert check_terms("x-ae", good) == ["loss", "kl"]
    bad = {"kl": torch.zeros(3), "count": 4, 7: torch.zeros(())}
    problems = loss_term_problems("x-ae", bad)
    assert problems == [
        "x-ae.loss() returned term 'kl' with shape (3,); "
        "every loss term must be a scalar (reduce it, e.g. with .mean())",
        "x-ae.loss() returned term 'count' as a int, not a tensor; every loss term must be a scalar tensor",
        "x-ae.loss() returned a term named 7 (int); term names must be strings",
        "x-ae.loss() returned no 'loss' term (it returned 'kl', 'count', 7); the trainer minimises terms['loss']",
    ]
    with pytest.raises(TrainingError) as info:
        check_terms("x-ae", bad)
    assert all(p in str(info.value) for p in problems) and "in 4 ways" in str(info.value)
    assert loss_term_problems("x-ae", {"loss": torch.zeros(())}, requires_grad=False) == []
    assert "does not require grad" in loss_term_problems("x-ae", {"loss": torch.zeros(())})[0]
    assert loss_term_problems("x-ae", ("loss", 1.0)) == [
        "x-ae.loss() returned a tuple of 2 item(s), not a dict of named scalar terms; "
        "return e.g. {'loss': loss, 'reconstruction': reconstruction}"]


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


# --- speed options: host syncs, fused kernels, channels_last, bf16, compile, threads -----------------------


def tiny_conv(seed: int = 0):
    torch.manual_seed(seed)
    return zoo.create("conv-vae", image_size=SIZE, channels=[4], hidden=8, latent_dim=2)


def test_deferred_host_syncs_give_the_same_run_and_still_name_the_nan_step(tmp_path):
    run(tmp_path / "every", lr_schedule="cosine")
    run(tmp_path / "deferred", lr_schedule="cosine", sync_every=2)
    assert_same(weights(tmp_path / "every"), weights(tmp_path / "deferred"))
    for key in ("train", "val"):
        assert [h[key] for h in recipe_of(tmp_path / "every")["history"]] == [
            h[key] for h in recipe_of(tmp_path / "deferred")["history"]]

    model = tiny_model()
    original = model.loss

    def loss(batch, step=None):
        terms = original(batch, step=step)
        if step == 4:
            terms["loss"] = terms["loss"] * float("inf")
        return terms

    model.loss = loss
    # syncs every 3 steps: step 5 (the 2nd batch of epoch 2) is only looked at after the 3rd, and still named
    with pytest.raises(TrainingError, match=r"loss is inf at step 5 \(epoch 2, batch 2/3\)"):
        run(tmp_path / "n", epochs=3, model=model, sync_every=3)
    _, state, _, _ = ckpt.read_checkpoint(tmp_path / "n")
    assert state["global_step"] == 3


def test_optimizer_runs_its_fused_kernel_unless_the_model_or_the_config_chose(tmp_path):
    fused, _ = run(tmp_path / "fused", epochs=2)
    loop, _ = run(tmp_path / "loop", epochs=2, fused_optimizer=False)
    assert recipe_of(tmp_path / "fused")["runtime"]["optimizer_kernel"] == "fused"
    assert recipe_of(tmp_path / "loop")["runtime"]["optimizer_kernel"] == "for-loop"
    _, state, tensors, _ = ckpt.read_checkpoint(tmp_path / "fused")
    assert ckpt.optimizer_from_tensors(tensors, state["optimizer"])["param_groups"][0]["fused"] is True
    a, b = weights(tmp_path / "fused"), weights(tmp_path / "loop")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)  # the same algorithm, up to float rounding
    model = tiny_model()
    model.configure_optimizer = lambda config: torch.optim.Adam(model.parameters(), lr=config.lr, foreach=True)
    run(tmp_path / "foreach", epochs=1, model=model)
    assert recipe_of(tmp_path / "foreach")["runtime"]["optimizer_kernel"] == "foreach"
    with pytest.raises(TrainingError, match="fused_optimizer"):
        run(tmp_path / "fused", epochs=3, resume=True, fused_optimizer=False)


def test_conv_models_train_channels_last_on_cpu_and_resume_bit_exactly(tmp_path):
    run(tmp_path / "full", model=tiny_conv(), lr_schedule="cosine")
    runtime = recipe_of(tmp_path / "full")["runtime"]
    assert runtime["memory_format"] == "channels_last" and runtime["optimizer_kernel"] == "fused"
    with pytest.raises(Interrupted):
        run(tmp_path / "cut", model=_interrupt_at(tiny_conv(), 4), lr_schedule="cosine")
    run(tmp_path / "cut", model=tiny_conv(), lr_schedule="cosine", resume=True)  # fused Adam state re-laid out
    assert_same(weights(tmp_path / "full"), weights(tmp_path / "cut"))
    run(tmp_path / "again", model=tiny_conv(), lr_schedule="cosine")
    assert_same(weights(tmp_path / "full"), weights(tmp_path / "again"))
    run(tmp_path / "contiguous", epochs=1, model=tiny_conv(), memory_format="contiguous")
    assert recipe_of(tmp_path / "contiguous")["runtime"]["memory_format"] == "contiguous"
    assert recipe_of(tmp_path / "again")["runtime"]["memory_format"] == "channels_last"
    run(tmp_path / "dense", epochs=1)  # no 4-D weights: auto keeps the default layout
    assert recipe_of(tmp_path / "dense")["runtime"]["memory_format"] == "contiguous"


def _native_bf16() -> bool:
    caps = torch.cpu.get_capabilities()
    return any(caps.get(flag) for flag in ("amx_bf16", "avx512_bf16", "bf16", "sve_bf16"))


@pytest.mark.skipif(not _native_bf16(), reason="this CPU has no native bfloat16")
def test_bf16_is_opt_in_recorded_checked_on_resume_and_validated_in_fp32(tmp_path):
    fp32, _ = run(tmp_path / "fp32", epochs=1)
    bf16, _ = run(tmp_path / "bf16", epochs=1, precision="bf16")
    again, _ = run(tmp_path / "again", epochs=1, precision="bf16")
    recipe = recipe_of(tmp_path / "bf16")
    assert recipe["train_config"]["precision"] == "bf16" and recipe_of(tmp_path / "fp32")["train_config"][
        "precision"] == "fp32"
    assert bf16.weights_sha256 != fp32.weights_sha256 and bf16.weights_sha256 == again.weights_sha256
    assert all(math.isfinite(v) for v in recipe["final_metrics"]["val"].values())
    with pytest.raises(TrainingError, match="precision"):
        run(tmp_path / "fp32", epochs=2, resume=True, precision="bf16")


def test_bf16_and_compile_are_refused_with_the_reason_where_unsupported(tmp_path, monkeypatch):
    with pytest.raises(TrainingError, match=r"precision must be one of fp32, bf16, got 'fp16'"):
        TrainConfig(precision="fp16")
    with pytest.raises(TrainingError, match=r"memory_format must be one of auto, contiguous, channels_last"):
        TrainConfig(memory_format="nhwc")
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"cpu_name": "Old Xeon", "architecture": "x86_64"})
    with pytest.raises(TrainingError, match=r"precision bf16 needs a CPU with native bfloat16 arithmetic .*"
                                            r"\(Old Xeon, x86_64\) has none"):
        run(tmp_path / "bf16", epochs=1, precision="bf16")
    monkeypatch.setattr(Trainer, "fit", lambda self, resume=False: pytest.fail("fit must not start"))
    with pytest.raises(TrainingError, match="compile is not supported under torchrun"):
        Trainer(tiny_model(), fake_dataset("train"), None, TrainConfig(compile=True), tmp_path, data_name="fake",
                ctx=DistContext(world_size=2))
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(TrainingError, match=r"compile on CPU needs a C\+\+ compiler"):
        Trainer(tiny_model(), fake_dataset("train"), None, TrainConfig(compile=True), tmp_path, data_name="fake")
    assert not (tmp_path / "bf16").exists()


def test_cli_reports_an_unsupported_precision_as_one_clear_line(tmp_path, monkeypatch):
    namespace = {}
    exec(FAKE_DATA, namespace)
    monkeypatch.setattr(zoo.data, "load", namespace["_load"])
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"cpu_name": "Old Xeon", "architecture": "x86_64"})
    result = CliRunner().invoke(main, ["train", "dense-vae", "--data", "fake", "--set", "image_size=8", "--epochs", "1",
                                       "--precision", "bf16", "--out", str(tmp_path / "r"), "--no-progress",
                                       "--device", "cpu", "--threads", "1"])
    assert result.exit_code == 1 and "native bfloat16" in result.output and "Traceback" not in result.output


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("clang++") is None, reason="no C++ compiler")
def test_compile_option_trains_and_is_recorded(tmp_path):
    compiled, _ = run(tmp_path / "compiled", epochs=2, compile=True)
    eager, _ = run(tmp_path / "eager", epochs=2)
    recipe = recipe_of(tmp_path / "compiled")
    assert recipe["train_config"]["compile"] is True and recipe["epochs_completed"] == 2
    assert all(math.isfinite(v) for v in recipe["final_metrics"]["val"].values())
    # validation is eager float32 in both, so the two runs' metrics are comparable (close, not equal)
    val_c, val_e = recipe["final_metrics"]["val"], recipe_of(tmp_path / "eager")["final_metrics"]["val"]
    assert val_c["loss"] == pytest.approx(val_e["loss"], rel=0.05)


def test_thread_count_is_recorded_and_a_change_on_resume_is_warned(tmp_path):
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        run(tmp_path / "t", epochs=1)
        assert recipe_of(tmp_path / "t")["runtime"]["threads"] == 1
        assert ckpt.read_checkpoint(tmp_path / "t")[1]["threads"] == 1
        torch.set_num_threads(2)
        messages = []
        run(tmp_path / "t", epochs=2, resume=True, log=messages.append)
        assert any("trained with 1 torch thread(s), now 2" in m and "--threads 1" in m for m in messages), messages
    finally:
        torch.set_num_threads(previous)


def test_cli_choices_are_the_trainers():
    import zoo.cli.train as cli_train
    from zoo.training import trainer

    assert cli_train.LR_SCHEDULES == trainer.LR_SCHEDULES and cli_train.PRECISIONS == trainer.PRECISIONS
    assert cli_train.MEMORY_FORMATS == trainer.MEMORY_FORMATS


def test_the_best_validation_epoch_is_kept_and_recorded(tmp_path):
    model = tiny_model()
    original = model.loss
    validations = []

    def loss(batch, step=None):
        terms = original(batch, step=step)
        if step is None:  # validation: make every epoch look worse than the one before
            validations.append(1)
            terms["loss"] = terms["loss"] + 1000.0 * len(validations)
        return terms

    model.loss = loss
    run(tmp_path / "b", epochs=3, model=model)
    run(tmp_path / "one", epochs=1)
    recipe = recipe_of(tmp_path / "b")
    assert recipe["best"]["epoch"] == 1 and recipe["best"]["path"] == "best"
    assert recipe["best"]["val"] == recipe["history"][0]["val"] and "on the 'test' split" in recipe["best"]["chosen_on"]
    assert recipe["best"]["weights_sha256"] == zoo.checkpoint.sha256_file(tmp_path / "b" / "best" / "model.safetensors")
    assert_same(weights(tmp_path / "b" / "best"), weights(tmp_path / "one"))  # epoch 1's weights, bit for bit
    assert zoo.load(tmp_path / "b" / "best").config.latent_dim == 2
    run(tmp_path / "plain", epochs=2)
    assert recipe_of(tmp_path / "plain")["best"]["epoch"] == min(
        recipe_of(tmp_path / "plain")["history"], key=lambda h: h["val"]["loss"])["epoch"]


def test_train_batches_binarize_exactly_and_start_mid_epoch():
    values = torch.tensor([0, 255, 77], dtype=torch.uint8).repeat_interleave(200)
    images = values.view(-1, 1, 1, 1).expand(-1, 1, 4, 4).contiguous()
    data = zoo.data.ImageDataset(images, torch.arange(600) // 200, name="grey", split="train", checksum="-")
    loader = TrainBatches(data, 50, seed=0, dynamic_binarize=True)

    batches = [(x.clone(), y.clone()) for x, y in loader]
    again = [(x.clone(), y.clone()) for x, y in loader]
    tail = [(x.clone(), y.clone()) for x, y in loader.iterate(5)]
    loader.set_epoch(1)
    redrawn = torch.cat([x for x, _ in loader])

    x, y = torch.cat([b for b, _ in batches]), torch.cat([b for _, b in batches])
    assert x.dtype == torch.float32 and set(x.unique().tolist()) <= {0.0, 1.0}
    assert (x[y == 0] == 0).all() and (x[y == 1] == 1).all()  # P(1) = v / 255 exactly at both ends
    assert abs(x[y == 2].mean().item() - 77 / 255) < 0.02
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(batches, again))
    assert len(tail) == len(batches) - 5 and all(torch.equal(a, b) for (a, _), (b, _) in zip(batches[5:], tail))
    assert not torch.equal(x, redrawn)
    plain = TrainBatches(data, 50, seed=0, shuffle=False)
    assert torch.equal(next(iter(plain))[0], images[:50].float() / 255)


SPLIT_DATA = textwrap.dedent("""
    import torch, zoo.data
    calls = []
    def _load(name, split="train", download=False):
        calls.append(split)
        n = {"train": 400, "fit": 360, "val": 40, "test": 64}[split]
        g = torch.Generator().manual_seed(len(split))
        images = torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8)
        selection = {"of": "train", "rule": "fake", "indices_sha256": split * 8} if split in ("fit", "val") else None
        return zoo.data.ImageDataset(images, torch.zeros(n, dtype=torch.int64), name=name, split=split,
                                     checksum="f" * 64, selection=selection)
""")


def test_cli_trains_on_fit_validates_on_val_and_records_the_splits(tmp_path, monkeypatch):
    namespace = {}
    exec(SPLIT_DATA, namespace)
    monkeypatch.setattr(zoo.data, "load", namespace["_load"])
    common = ["train", "dense-vae", "--data", "fake", "--set", "image_size=8", "--set", "hidden=[16]", "--set",
              "latent_dim=2", "--epochs", "1", "--batch-size", "100", "--no-progress", "--threads", "1"]
    result = CliRunner().invoke(main, [*common, "--out", str(tmp_path / "val")])
    assert result.exit_code == 0, result.output
    assert namespace["calls"] == ["fit", "val"]
    data = recipe_of(tmp_path / "val")["data"]
    assert (data["train_split"], data["val_split"], data["train_images"], data["val_images"]) == ("fit", "val", 360, 40)
    assert data["train_selection"]["indices_sha256"] == "fit" * 8 and data["val_selection"]["rule"] == "fake"
    assert "note" not in data and recipe_of(tmp_path / "val")["runtime"]["threads"] == 1

    namespace["calls"].clear()
    result = CliRunner().invoke(main, [*common, "--val-split", "test", "--out", str(tmp_path / "test")])
    assert result.exit_code == 0, result.output
    assert namespace["calls"] == ["train", "test"]
    data = recipe_of(tmp_path / "test")["data"]
    assert (data["train_split"], data["val_split"]) == ("train", "test") and "test split" in data["note"]

    resumed = CliRunner().invoke(main, [*common, "--epochs", "2", "--val-split", "test", "--resume",
                                        "--out", str(tmp_path / "val")])
    assert resumed.exit_code == 1 and "it was trained on the splits" in resumed.output
