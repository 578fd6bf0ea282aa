"""`zoo publish` and Hub loading against the local Hub-protocol server (tests/hub_server.py).

huggingface_hub reads HF_ENDPOINT / HF_HUB_OFFLINE / HF_HUB_CACHE when it is imported, so every
publish and load runs in a fresh subprocess with the environment ``client_env`` builds; nothing
in huggingface_hub is patched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import zoo
from zoo.checkpoint import save_checkpoint, sha256_file

try:  # pytest puts tests/ on sys.path
    from hub_server import client_env, hub_server, run_client
except ImportError:  # pragma: no cover
    from tests.hub_server import client_env, hub_server, run_client

WRITE = "hf_zoo_write_token"
READ = "hf_zoo_read_token"
TINY = {"hidden": [16], "latent_dim": 2}

# Loads each target in one client process; reports weights and deterministic outputs, or the error.
LOAD = """
import hashlib, torch, zoo

def load(target, local_files_only=False):
    model = zoo.load(target, local_files_only=local_files_only)
    x = torch.rand(4, *model.input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mu, logvar = model.posterior(x)
        logits = model.decoder_logits(mu)
    return {"weights": {k: hashlib.sha256(v.numpy().tobytes()).hexdigest() for k, v in model.state_dict().items()},
            "mu": mu.tolist(), "logits": logits.flatten().tolist()[:64]}

results = []
for target, local_files_only in ARGS:
    try:
        results.append(load(target, local_files_only))
    except Exception as exc:
        results.append({"error": {"type": type(exc).__name__, "message": str(exc)}})
emit(results)
"""


def load_many(env: dict, *targets: str | tuple[str, bool]) -> list[dict]:
    """Load every target (or ``(target, local_files_only)``) in one subprocess; errors come back as dicts."""
    args = [t if isinstance(t, tuple) else (t, False) for t in targets]
    return run_client(LOAD, env, args=args)


def load(env: dict, target: str, local_files_only: bool = False) -> dict:
    (result,) = load_many(env, (target, local_files_only))
    assert "error" not in result, result
    return result


def load_error(env: dict, target: str, local_files_only: bool = False) -> dict:
    (result,) = load_many(env, (target, local_files_only))
    assert "error" in result, "expected the load to fail"
    return result["error"]


@pytest.fixture
def hub():
    with hub_server(tokens={WRITE: "write", READ: "read"}) as server:
        yield server


def make_model(folder: Path, seed: int, card: bool = True) -> Path:
    """A tiny dense-vae checkpoint in ``folder`` (weights from ``seed``) with a rendered card."""
    torch.manual_seed(seed)
    model = zoo.create("dense-vae", **TINY)
    save_checkpoint(model, folder)
    if card:
        from zoo.cards import write_card

        write_card(folder, repo_id="zoo-tester/tiny")
    return folder


def local_outputs(folder: Path) -> dict:
    import hashlib

    model = zoo.load(folder)
    x = torch.rand(4, *model.input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mu, _ = model.posterior(x)
        logits = model.decoder_logits(mu)
    return {"weights": {k: hashlib.sha256(v.numpy().tobytes()).hexdigest() for k, v in model.state_dict().items()},
            "mu": mu.tolist(), "logits": logits.flatten().tolist()[:64]}


def zoo_cli(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zoo.cli", *args], env=env, capture_output=True, text=True,
                          timeout=180)


def publish(hub, folder: Path, env: dict, repo: str, *extra: str) -> str:
    """Run `zoo publish --json`; return the commit hash."""
    proc = zoo_cli(["publish", str(folder), "--repo-id", repo, "--json", *extra], env)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["commit_url"] == f"{hub.url}/{repo}/commit/{result['commit_oid']}"
    return result["commit_oid"]


def cache_files(env: dict) -> dict[str, bytes]:
    root = Path(env["HF_HUB_CACHE"])
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file() and ".locks" not in p.parts}


# --------------------------------------------------------------------------- publish


def test_publish_then_load_round_trip_is_bit_identical(hub, tmp_path):
    folder = make_model(tmp_path / "model", seed=1)
    (folder / "eval.json").write_text("{}")
    env = client_env(hub, tmp_path / "publisher", token=WRITE)
    proc = zoo_cli(["publish", str(folder), "--repo-id", "zoo-tester/tiny", "-m", "first version"], env)
    assert proc.returncode == 0, proc.stderr
    oid = hub.repo("zoo-tester/tiny").branches["main"]
    assert f"commit:   {hub.url}/zoo-tester/tiny/commit/{oid}" in proc.stdout
    assert f"revision: {oid}" in proc.stdout

    # One repo creation and one commit holding the model, its card and its results.
    assert len(hub.received("POST", "/api/repos/create")) == 1
    assert len(hub.received("POST", r"/api/models/zoo-tester/tiny/commit/main")) == 1
    head = hub.repo("zoo-tester/tiny").head()
    assert head.title == "first version"
    assert set(head.files) == {".gitattributes", "model.safetensors", "config.json", "README.md", "eval.json"}
    assert head.files["model.safetensors"].is_lfs
    assert hub.files("zoo-tester/tiny")["model.safetensors"] == (folder / "model.safetensors").read_bytes()

    consumer = client_env(hub, tmp_path / "consumer")
    got = load(consumer, "hf://zoo-tester/tiny")
    assert got == local_outputs(folder)
    # The files went to the standard HF cache, under the commit that was published.
    snapshot = Path(consumer["HF_HUB_CACHE"]) / "models--zoo-tester--tiny" / "snapshots" / oid
    assert (snapshot / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()


def test_revisions_and_branches(hub, tmp_path):
    env = client_env(hub, tmp_path / "publisher", token=WRITE)
    first_folder, second_folder = make_model(tmp_path / "v1", seed=1), make_model(tmp_path / "v2", seed=2)
    first = publish(hub, first_folder, env, "zoo-tester/tiny")
    second = publish(hub, second_folder, env, "zoo-tester/tiny")
    assert first != second and hub.repo("zoo-tester/tiny").branches["main"] == second

    dev_folder = make_model(tmp_path / "dev", seed=3)
    dev = publish(hub, dev_folder, env, "zoo-tester/tiny", "--revision", "dev")
    assert hub.repo("zoo-tester/tiny").branches == {"main": second, "dev": dev}

    consumer = client_env(hub, tmp_path / "consumer")
    expected = {"first": local_outputs(first_folder), "second": local_outputs(second_folder),
                "dev": local_outputs(dev_folder)}
    got = load_many(consumer, f"hf://zoo-tester/tiny@{first}", "hf://zoo-tester/tiny", "hf://zoo-tester/tiny@dev")
    assert got == [expected["first"], expected["second"], expected["dev"]]


def test_publishing_unchanged_files_makes_no_commit(hub, tmp_path):
    env = client_env(hub, tmp_path / "publisher", token=WRITE)
    folder = make_model(tmp_path / "m", seed=1)
    first = publish(hub, folder, env, "zoo-tester/tiny")
    proc = zoo_cli(["publish", str(folder), "--repo-id", "zoo-tester/tiny"], env)
    assert proc.returncode == 0 and "no changes" in proc.stdout and f"revision: {first}" in proc.stdout


def test_private_flag_is_passed_through(hub, tmp_path):
    env = client_env(hub, tmp_path / "publisher", token=WRITE)
    folder = make_model(tmp_path / "m", seed=1)
    publish(hub, folder, env, "zoo-tester/secret", "--private")
    publish(hub, folder, env, "zoo-tester/open")
    assert hub.repo("zoo-tester/secret").private is True
    assert hub.repo("zoo-tester/secret").create_payload["visibility"] == "private"
    assert hub.repo("zoo-tester/open").private is False
    proc = zoo_cli(["publish", str(folder), "--repo-id", "zoo-tester/open", "--private"], env)
    assert proc.returncode == 0 and "--private applies only when it is created" in proc.stderr
    assert hub.repo("zoo-tester/open").private is False

    # Only a token holder can load the private one; without a token it looks missing.
    err = load_error(client_env(hub, tmp_path / "anon"), "hf://zoo-tester/secret")
    assert err["type"] == "HubError" and "repository not found" in err["message"]
    assert "hf auth login" in err["message"]
    got = load(client_env(hub, tmp_path / "reader", token=READ), "hf://zoo-tester/secret")
    assert got == local_outputs(folder)


@pytest.mark.parametrize("token, expected", [
    (None, "no Hugging Face token was found"),
    ("hf_not_a_real_token", "rejected the token (401 Unauthorized: Invalid credentials in Authorization header)"),
    (READ, "403 Forbidden"),
])
def test_bad_or_missing_token_is_a_clear_message(hub, tmp_path, token, expected):
    folder = make_model(tmp_path / "m", seed=1)
    env = client_env(hub, tmp_path / "publisher", token=token)
    proc = zoo_cli(["publish", str(folder), "--repo-id", "zoo-tester/tiny"], env)
    assert proc.returncode == 1
    assert proc.stderr.startswith("Error: publishing") and expected in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    if token != READ:
        assert "401" in proc.stderr and "hf auth login" in proc.stderr
    assert hub.received("POST", "/api/repos/create")  # the server was asked and said no
    assert not hub.repos


def test_token_option_overrides_the_environment(hub, tmp_path):
    folder = make_model(tmp_path / "m", seed=1)
    env = client_env(hub, tmp_path / "publisher", token="hf_not_a_real_token")
    proc = zoo_cli(["publish", str(folder), "--repo-id", "zoo-tester/tiny", "--token", WRITE], env)
    assert proc.returncode == 0, proc.stderr
    assert {r["token"] for r in hub.request_log if r["server"] == "hub"} == {WRITE}


def test_publish_refusals(tmp_path):
    """Checked before any request: no server is needed (and none is reachable at this endpoint)."""
    from click.testing import CliRunner

    from zoo.cli import main

    def refusal(folder: Path) -> str:
        result = CliRunner().invoke(main, ["publish", str(folder), "--repo-id", "zoo-tester/tiny"])
        assert result.exit_code == 1 and result.exception is not None and "Traceback" not in result.output
        return result.output

    folder = make_model(tmp_path / "no-card", seed=1, card=False)
    out = refusal(folder)
    assert "has no model card (README.md)" in out and "zoo card" in out

    folder = make_model(tmp_path / "no-weights", seed=1)
    (folder / "model.safetensors").unlink()
    assert "has no weights (model.safetensors)" in refusal(folder)

    folder = make_model(tmp_path / "pickle", seed=1)
    (folder / "extra").mkdir()
    torch.save({"w": torch.zeros(1)}, folder / "extra" / "pytorch_model.bin")
    out = refusal(folder)
    assert "refusing to publish" in out and "extra/pytorch_model.bin" in out and "pickle" in out

    folder = make_model(tmp_path / "mismatch", seed=1)
    config = json.loads((folder / "config.json").read_text())
    config["config"]["latent_dim"] = 3
    (folder / "config.json").write_text(json.dumps(config))
    assert "does not match the config" in refusal(folder)

    result = CliRunner().invoke(main, ["publish", str(make_model(tmp_path / "ok", seed=1)), "--repo-id", "bad id"])
    assert result.exit_code == 1 and "ORG/NAME" in result.output


# --------------------------------------------------------------------------- loading


def test_offline_load_from_cache_with_the_server_stopped(tmp_path):
    with hub_server(tokens={WRITE: "write"}) as hub:
        url = hub.url
        folder = make_model(tmp_path / "m", seed=1)
        oid = publish(hub, folder, client_env(hub, tmp_path / "publisher", token=WRITE), "zoo-tester/tiny")
        online = client_env(hub, tmp_path / "consumer")
        expected = load(online, "hf://zoo-tester/tiny")
    assert expected == local_outputs(folder)
    # The server is gone: HF_HUB_OFFLINE=1 reads the cache without any network call; what is not cached
    # is a clear error, at once.
    offline = client_env(url, tmp_path / "consumer", offline=True)
    cached, pinned, other, branch = load_many(offline, "hf://zoo-tester/tiny", f"hf://zoo-tester/tiny@{oid}",
                                              "hf://zoo-tester/other", "hf://zoo-tester/tiny@dev")
    assert cached == pinned == expected
    for result in (other, branch):
        assert result["error"]["type"] == "HubError"
        assert "not in the Hugging Face cache" in result["error"]["message"]
        assert "HF_HUB_OFFLINE=1" in result["error"]["message"]
    # local_files_only=True does the same without the environment variable.
    cache_only = client_env(url, tmp_path / "consumer")
    cached, other = load_many(cache_only, ("hf://zoo-tester/tiny", True), ("hf://zoo-tester/other", True))
    assert cached == expected
    assert other["error"]["type"] == "HubError" and "local_files_only=True" in other["error"]["message"]


def test_corrupted_download_fails_the_checksum_and_is_not_cached(hub, tmp_path):
    folder = make_model(tmp_path / "m", seed=1)
    publish(hub, folder, client_env(hub, tmp_path / "publisher", token=WRITE), "zoo-tester/tiny")
    env = client_env(hub, tmp_path / "consumer")
    hub.corrupt("zoo-tester/tiny", "model.safetensors", mode="truncate")  # the client's size check catches this
    err = load_error(env, "hf://zoo-tester/tiny")
    assert err["type"] == "HubError" and "incomplete or damaged" in err["message"]

    hub.corrupt("zoo-tester/tiny", "model.safetensors")  # same size, every byte flipped, original sha advertised
    err = load_error(env, "hf://zoo-tester/tiny")
    assert err["type"] == "CheckpointError" and "model.safetensors did not match the checksum" in err["message"]
    good = (folder / "model.safetensors").read_bytes()
    assert not [p for p, data in cache_files(env).items() if "model.safetensors" in p or len(data) == len(good)]
    hub.uncorrupt()
    assert load(env, "hf://zoo-tester/tiny") == local_outputs(folder)


def test_repo_with_only_pickle_weights_is_refused(hub, tmp_path):
    upload = tmp_path / "upload"
    upload.mkdir()
    torch.save({"w": torch.zeros(2)}, upload / "pytorch_model.bin")
    (upload / "config.json").write_text(json.dumps({"format_version": 1, "architecture": "dense-vae",
                                                    "config": TINY}))
    run_client("""
from huggingface_hub import HfApi
HfApi().create_repo("zoo-tester/pickled")
HfApi().upload_folder(repo_id="zoo-tester/pickled", folder_path=ARGS["folder"])
""", client_env(hub, tmp_path / "publisher", token=WRITE), args={"folder": str(upload)})
    err = load_error(client_env(hub, tmp_path / "consumer"), "hf://zoo-tester/pickled")
    assert err["type"] == "CheckpointError"
    assert "holds only pickle weights (pytorch_model.bin)" in err["message"]
    assert "arbitrary code" in err["message"]
    assert not hub.received("GET", r".*/resolve/.*pytorch_model\.bin")
    assert not hub.received("HEAD", r".*/resolve/.*pytorch_model\.bin")


def test_bad_hub_targets(tmp_path):
    from zoo.hub import HubError, parse_target

    assert parse_target("org/name") == ("org/name", None)
    assert parse_target("org/name@v1.0") == ("org/name", "v1.0")
    for bad in ("name", "org/name@", "a/b/c", "/name"):
        with pytest.raises(HubError, match="expected hf://ORG/NAME"):
            parse_target(bad)


def test_zoo_core_imports_without_huggingface_hub():
    code = ("import sys, zoo, zoo.api, zoo.resolve, zoo.hub, zoo.cards, zoo.cli\n"
            "assert 'huggingface_hub' not in sys.modules, 'imported eagerly'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


# --------------------------------------------------------------------------- pinned registry entries

PINNED_PLUGIN = """
import json
from pathlib import Path

import zoo
from zoo.registry import PretrainedEntry

SPEC = Path(__file__).with_name("hubpin_entry.json")


@zoo.hookimpl
def register_models(register):
    if not SPEC.is_file():  # not pinned yet
        return
    spec = json.loads(SPEC.read_text())
    register(PretrainedEntry(name="dense-vae-hubpin", architecture="dense-vae", config=spec["config"],
                             sha256=spec["sha256"], bundled=Path(spec["bundled"]) if spec["bundled"] else None,
                             repo_id=spec["repo_id"], revision=spec["revision"]))
"""


@pytest.fixture
def pinned(plugin_distribution, tmp_path):
    """A throwaway plugin distribution registering ``dense-vae-hubpin``; returns a function that re-pins it."""
    plugin_distribution("zoo-hubpin", PINNED_PLUGIN)

    def pin(sha256: str, repo_id: str, revision: str | None, bundled: Path | None = None) -> None:
        spec = {"config": TINY, "sha256": sha256, "repo_id": repo_id, "revision": revision,
                "bundled": str(bundled) if bundled else None}
        (tmp_path / "hubpin_entry.json").write_text(json.dumps(spec))

    return pin


def plugin_env(hub_or_url, root: Path, plugin_dir: Path, **kw) -> dict:
    env = client_env(hub_or_url, root, **kw)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(plugin_dir), env.get("PYTHONPATH")) if p)
    env.pop("ZOO_PLUGINS", None)
    return env


def test_resolution_order_bundled_then_cache_then_hub(hub, tmp_path, pinned):
    folder = make_model(tmp_path / "m", seed=1)
    oid = publish(hub, folder, client_env(hub, tmp_path / "publisher", token=WRITE), "zoo-tester/pinned")
    sha = sha256_file(folder / "model.safetensors")
    bundled = tmp_path / "bundled"
    bundled.mkdir()
    for name in ("model.safetensors", "config.json"):
        (bundled / name).write_bytes((folder / name).read_bytes())
    pinned(sha, "zoo-tester/pinned", oid, bundled)
    env = plugin_env(hub, tmp_path / "consumer", tmp_path)
    expected = local_outputs(folder)

    # 1. Bundled weights: the Hub is not contacted at all.
    hub.clear_requests()
    assert load(env, "dense-vae-hubpin") == expected
    assert hub.requests == [] and not cache_files(env)

    # 2. No bundled weights, nothing cached: downloaded from the Hub at the pinned revision.
    (bundled / "model.safetensors").unlink()
    assert load(env, "dense-vae-hubpin") == expected
    assert hub.received("GET", rf"/zoo-tester/pinned/resolve/{oid}/model\.safetensors") or \
        hub.received("HEAD", rf"/zoo-tester/pinned/resolve/{oid}/model\.safetensors")

    # 3. Cached: read from the HF cache with no request, even with a branch revision.
    pinned(sha, "zoo-tester/pinned", None, bundled)
    hub.clear_requests()
    load(env, "hf://zoo-tester/pinned")  # caches refs/main
    hub.clear_requests()
    assert load(env, "dense-vae-hubpin") == expected
    assert hub.requests == []

    # 4. And offline, with the server stopped.
    hub.stop()
    offline = plugin_env(hub.url, tmp_path / "consumer", tmp_path, offline=True)
    assert load_many(offline, "dense-vae-hubpin", ("dense-vae-hubpin", True)) == [expected, expected]


def test_pinned_sha256_mismatch_is_an_error_and_nothing_bad_is_cached(hub, tmp_path, pinned):
    folder = make_model(tmp_path / "m", seed=1)
    oid = publish(hub, folder, client_env(hub, tmp_path / "publisher", token=WRITE), "zoo-tester/pinned")
    good = sha256_file(folder / "model.safetensors")
    pinned(good, "zoo-tester/pinned", oid)
    env = plugin_env(hub, tmp_path / "consumer", tmp_path)

    hub.corrupt("zoo-tester/pinned", "model.safetensors")
    err = load_error(env, "dense-vae-hubpin")
    assert err["type"] == "CheckpointError", err
    assert "removed from the Hugging Face cache" in err["message"]
    blobs = Path(env["HF_HUB_CACHE"]) / "models--zoo-tester--pinned" / "blobs"
    assert not (blobs / good).exists()
    for path, data in cache_files(env).items():
        assert "model.safetensors" not in path, path

    # The Hub serves good bytes again: the next load downloads and verifies them.
    hub.uncorrupt()
    assert load(env, "dense-vae-hubpin") == local_outputs(folder)
    assert sha256_file(blobs / good) == good

    # A pin that the published file does not match: refused, and that file is dropped from the cache too.
    pinned("0" * 64, "zoo-tester/pinned", oid)
    err = load_error(env, "dense-vae-hubpin")
    assert err["type"] == "CheckpointError" and f"registry pins {'0' * 64}" in err["message"]
    assert not (blobs / good).exists()


def test_a_damaged_cached_copy_is_detected_and_dropped(hub, tmp_path):
    folder = make_model(tmp_path / "m", seed=1)
    publish(hub, folder, client_env(hub, tmp_path / "publisher", token=WRITE), "zoo-tester/tiny")
    env = client_env(hub, tmp_path / "consumer")
    expected = load(env, "hf://zoo-tester/tiny")
    blob = Path(env["HF_HUB_CACHE"]) / "models--zoo-tester--tiny" / "blobs" / sha256_file(folder / "model.safetensors")
    blob.write_bytes(bytes(b ^ 0xFF for b in blob.read_bytes()))  # bit rot in the cache

    offline = client_env(hub.url, tmp_path / "consumer", offline=True)
    err = load_error(offline, "hf://zoo-tester/tiny")
    assert err["type"] == "CheckpointError" and "removed from the Hugging Face cache" in err["message"]
    assert not blob.exists()
    # Online, the damaged copy is replaced by a fresh download.
    assert load(env, "hf://zoo-tester/tiny") == expected
    assert sha256_file(blob) == blob.name


def test_loading_with_a_wrong_token_is_a_clear_message(hub, tmp_path):
    publish(hub, make_model(tmp_path / "m", seed=1), client_env(hub, tmp_path / "publisher", token=WRITE),
            "zoo-tester/tiny")
    err = load_error(client_env(hub, tmp_path / "consumer", token="hf_not_a_real_token"), "hf://zoo-tester/tiny")
    assert err["type"] == "HubError"
    assert "rejected the token (401 Unauthorized: Invalid credentials in Authorization header)" in err["message"]
    assert "hf auth login" in err["message"]
