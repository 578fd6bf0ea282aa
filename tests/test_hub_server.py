"""The fake Hub (tests/hub_server.py) against the real, unmodified huggingface_hub client.

The client runs in a subprocess per scenario (see hub_server.run_client): huggingface_hub reads
HF_ENDPOINT / HF_HUB_DISABLE_XET / HF_HUB_OFFLINE / HF_HUB_CACHE at import time.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest

try:  # tests/ is not a package: pytest puts tests/ itself on sys.path
    from hub_server import client_env, hub_server, run_client, start_hub_server
except ImportError:  # pragma: no cover - if tests/ ever becomes a package
    from tests.hub_server import client_env, hub_server, run_client, start_hub_server

WRITE = "hf_write_token_for_tests"
READ = "hf_read_token_for_tests"
REPO = "zoo-tester/tiny-ae"


@pytest.fixture
def hub():
    with hub_server(tokens={WRITE: "write", READ: "read"}) as server:
        yield server


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_folder(root: Path, weights: bytes, config: dict | None = None) -> Path:
    folder = root / "export"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "config.json").write_text(json.dumps(config or {"latent_dim": 8}))
    (folder / "README.md").write_text("---\nlibrary_name: ae-zoo\n---\n# tiny ae\n")
    return folder


UPLOAD = """
from huggingface_hub import HfApi
api = HfApi()
api.create_repo(ARGS["repo"], private=ARGS.get("private", False), exist_ok=True)
info = api.upload_folder(repo_id=ARGS["repo"], folder_path=ARGS["folder"], commit_message=ARGS.get("msg", "upload"),
                         revision=ARGS.get("revision"))
emit({"oid": info.oid, "url": info.commit_url})
"""

DOWNLOAD = """
import hashlib
from huggingface_hub import hf_hub_download
path = hf_hub_download(ARGS["repo"], ARGS["filename"], revision=ARGS.get("revision"))
emit({"path": path, "sha256": hashlib.sha256(open(path, "rb").read()).hexdigest(),
      "real": __import__("os").path.realpath(path)})
"""


def upload(hub, tmp_path, folder, **kw):
    env = client_env(hub, tmp_path / "uploader", token=WRITE)
    return run_client(UPLOAD, env, args={"repo": REPO, "folder": str(folder), **kw})


# --------------------------------------------------------------------------- repo creation / auth


def test_create_repo_passes_private_flag(hub, tmp_path):
    env = client_env(hub, tmp_path, token=WRITE)
    out = run_client(
        """
from huggingface_hub import HfApi
api = HfApi()
a = api.create_repo("zoo-tester/secret", private=True)
b = api.create_repo("zoo-tester/open", private=False)
c = api.create_repo("zoo-tester/secret", private=True, exist_ok=True)   # 409 swallowed by the client
emit({"a": str(a), "a_id": a.repo_id, "b": str(b), "c": str(c),
      "info_private": api.model_info("zoo-tester/secret").private, "whoami": api.whoami()["name"]})
""",
        env,
    )
    assert out["a"] == f"{hub.url}/zoo-tester/secret" and out["a_id"] == "zoo-tester/secret"
    assert out["info_private"] is True and out["whoami"] == hub.username
    assert hub.repo("zoo-tester/secret").private is True
    assert hub.repo("zoo-tester/secret").create_payload["visibility"] == "private"
    assert hub.repo("zoo-tester/open").private is False
    assert len(hub.received("POST", "/api/repos/create")) == 3

    err = run_client('from huggingface_hub import HfApi; HfApi().create_repo("zoo-tester/open")', env,
                     expect_error=True)
    assert err["type"] == "HfHubHTTPError" and err["status_code"] == 409


def test_auth_errors_map_to_client_exceptions(hub, tmp_path):
    """Records which exception class the client raises for each failure, for the zoo to map."""
    owner = client_env(hub, tmp_path / "owner", token=WRITE)
    run_client(f'from huggingface_hub import HfApi; HfApi().create_repo("{REPO}", private=True)', owner)

    create = f'from huggingface_hub import HfApi; HfApi().create_repo("{REPO}-2")'
    download = f'from huggingface_hub import hf_hub_download; hf_hub_download("{REPO}", ".gitattributes")'

    # Unknown token: 401 "Invalid credentials in Authorization header" -> plain HfHubHTTPError.
    bad = client_env(hub, tmp_path / "bad", token="hf_not_a_real_token")
    for code in (create, download):
        err = run_client(code, bad, expect_error=True)
        assert err["qualname"] == "huggingface_hub.errors.HfHubHTTPError", err
        assert err["status_code"] == 401
        assert "Invalid credentials in Authorization header" in err["message"]
    err = run_client("from huggingface_hub import whoami; whoami()", bad, expect_error=True)
    assert err["type"] == "HfHubHTTPError" and err["status_code"] == 401
    assert "HF_TOKEN environment variable is invalid" in err["message"]

    # No token: private repo looks missing -> RepositoryNotFoundError (401).
    anon = client_env(hub, tmp_path / "anon")
    err = run_client(download, anon, expect_error=True)
    assert err["type"] == "RepositoryNotFoundError" and err["status_code"] == 401
    assert "HfHubHTTPError" in err["mro"]
    err = run_client(create, anon, expect_error=True)
    assert err["type"] == "HfHubHTTPError" and err["status_code"] == 401

    # Read-only token cannot write -> HfHubHTTPError 403.
    reader = client_env(hub, tmp_path / "reader", token=READ)
    err = run_client(create, reader, expect_error=True)
    assert err["type"] == "HfHubHTTPError" and err["status_code"] == 403

    # Missing repo / revision / file with a valid token.
    cases = {
        'hf_hub_download("zoo-tester/nope", "config.json")': ("RepositoryNotFoundError", 404),
        f'hf_hub_download("{REPO}", "config.json", revision="no-such-branch")': ("RevisionNotFoundError", 404),
        f'hf_hub_download("{REPO}", "missing.json")': ("RemoteEntryNotFoundError", 404),
    }
    for call, (exc_type, status) in cases.items():
        err = run_client(f"from huggingface_hub import hf_hub_download; {call}", owner, expect_error=True)
        assert (err["type"], err["status_code"]) == (exc_type, status), (call, err)
        assert "HfHubHTTPError" in err["mro"]
    assert "EntryNotFoundError" in run_client(
        f'from huggingface_hub import hf_hub_download; hf_hub_download("{REPO}", "missing.json")', owner,
        expect_error=True)["mro"]

    # Nothing got created by the failed attempts.
    assert set(hub.repos) == {("model", REPO)}


# --------------------------------------------------------------------------- upload + download


def test_upload_folder_and_download_round_trip(hub, tmp_path):
    weights = os.urandom(64 * 1024)
    folder = make_folder(tmp_path, weights)
    extra = os.urandom(100)
    (folder / "ckpt").mkdir()
    (folder / "ckpt" / "ema.safetensors").write_bytes(extra)
    out = upload(hub, tmp_path, folder, private=True, msg="add tiny ae")

    # The server received the legacy (non-Xet) upload sequence and recorded one commit.
    assert hub.received("POST", f"/api/models/{REPO}/preupload/main")
    assert hub.received("POST", f"/{REPO}.git/info/lfs/objects/batch")
    assert hub.received("POST", f"/api/models/{REPO}/commit/main")
    puts = [r for r in hub.request_log if r["server"] == "cdn" and r["method"] == "PUT"]
    assert sorted(r["path"] for r in puts) == sorted(f"/upload/{sha256(d)}" for d in (weights, extra))
    assert {r["status"] for r in puts} == {200}
    repo = hub.repo(REPO)
    assert repo.branches["main"] == out["oid"] and len(out["oid"]) == 40
    assert out["url"] == f"{hub.url}/{REPO}/commit/{out['oid']}"
    head = repo.head()
    assert head.title == "add tiny ae"
    assert head.files["model.safetensors"].is_lfs and not head.files["config.json"].is_lfs
    assert not head.files["README.md"].is_lfs
    assert hub.files(REPO)["model.safetensors"] == weights

    env = client_env(hub, tmp_path / "consumer", token=WRITE)
    cache = Path(env["HF_HUB_CACHE"])
    got = run_client(
        """
import hashlib, os
from huggingface_hub import hf_hub_download, snapshot_download, HfApi
one = hf_hub_download(ARGS["repo"], "model.safetensors")
snap = snapshot_download(ARGS["repo"])
info = HfApi().model_info(ARGS["repo"], files_metadata=True)
emit({"one": one, "snap": snap, "sha": info.sha,
      "siblings": {s.rfilename: (s.lfs.sha256 if s.lfs else None) for s in info.siblings},
      "files": sorted(os.listdir(snap))})
""",
        env,
        args={"repo": REPO},
    )
    assert got["sha"] == out["oid"]
    assert got["siblings"]["model.safetensors"] == sha256(weights)
    assert got["files"] == [".gitattributes", "README.md", "ckpt", "config.json", "model.safetensors"]
    assert (Path(got["snap"]) / "ckpt" / "ema.safetensors").read_bytes() == extra
    assert Path(got["one"]).read_bytes() == weights
    snap = Path(got["snap"])
    assert snap == cache / "models--zoo-tester--tiny-ae" / "snapshots" / out["oid"]
    for name in ("model.safetensors", "config.json", "README.md"):
        assert (snap / name).read_bytes() == (folder / name).read_bytes()
    # LFS blobs are cached under their sha256 (the X-Linked-Etag), regular ones under the git sha1.
    assert (cache / "models--zoo-tester--tiny-ae" / "blobs" / sha256(weights)).read_bytes() == weights
    assert (cache / "models--zoo-tester--tiny-ae" / "refs" / "main").read_text() == out["oid"]


def test_lfs_files_served_without_redirect(tmp_path):
    with start_hub_server([WRITE], lfs_redirect=False) as hub:
        weights = os.urandom(4096)
        upload(hub, tmp_path, make_folder(tmp_path, weights))
        got = run_client(DOWNLOAD, client_env(hub, tmp_path / "c"), args={"repo": REPO, "filename": "model.safetensors"})
        assert got["sha256"] == sha256(weights)
        assert not [r for r in hub.request_log if r["server"] == "cdn" and r["method"] == "GET"]


def test_second_upload_of_same_lfs_content_skips_the_put(hub, tmp_path):
    weights = os.urandom(2048)
    upload(hub, tmp_path, make_folder(tmp_path / "a", weights))
    upload(hub, tmp_path, make_folder(tmp_path / "b", weights, config={"latent_dim": 16}))
    puts = [r for r in hub.request_log if r["server"] == "cdn" and r["method"] == "PUT"]
    assert len(puts) == 1  # the batch API answered "already exists" (no actions) the second time
    assert len(hub.received("POST", f"/api/models/{REPO}/commit/main")) == 2
    assert len(hub.repo(REPO).commits) == 3  # initial + 2


def test_download_at_first_commit_sha(hub, tmp_path):
    first, second = os.urandom(1000), os.urandom(1000)
    c1 = upload(hub, tmp_path, make_folder(tmp_path / "1", first, {"v": 1}))["oid"]
    c2 = upload(hub, tmp_path, make_folder(tmp_path / "2", second, {"v": 2}))["oid"]
    assert c1 != c2

    env = client_env(hub, tmp_path / "consumer")
    old = run_client(DOWNLOAD, env, args={"repo": REPO, "filename": "model.safetensors", "revision": c1})
    new = run_client(DOWNLOAD, env, args={"repo": REPO, "filename": "model.safetensors"})
    assert old["sha256"] == sha256(first) and f"/snapshots/{c1}/" in old["path"]
    assert new["sha256"] == sha256(second) and f"/snapshots/{c2}/" in new["path"]
    cfg = run_client(DOWNLOAD, env, args={"repo": REPO, "filename": "config.json", "revision": c1})
    assert json.loads(Path(cfg["path"]).read_text()) == {"v": 1}

    commits = run_client(
        "from huggingface_hub import HfApi; emit([c.commit_id for c in HfApi().list_repo_commits(ARGS['r'])])",
        env, args={"r": REPO})
    assert commits[:2] == [c2, c1] and len(commits) == 3


def test_branches(hub, tmp_path):
    upload(hub, tmp_path, make_folder(tmp_path / "main", b"main-weights"))
    env = client_env(hub, tmp_path / "w", token=WRITE)
    err = run_client(UPLOAD, env, args={"repo": REPO, "folder": str(make_folder(tmp_path / "dev", b"dev")),
                                        "revision": "dev"}, expect_error=True)
    assert err["type"] == "RevisionNotFoundError"  # committing to a branch that does not exist
    run_client(f'from huggingface_hub import HfApi; HfApi().create_branch("{REPO}", branch="dev")', env)
    dev = upload(hub, tmp_path, tmp_path / "dev" / "export", revision="dev")["oid"]
    assert hub.repo(REPO).branches["dev"] == dev
    assert hub.files(REPO)["model.safetensors"] == b"main-weights"
    assert hub.files(REPO, "dev")["model.safetensors"] == b"dev"
    refs = run_client(f'from huggingface_hub import HfApi; emit([b.name for b in HfApi().list_repo_refs("{REPO}").branches])', env)
    assert sorted(refs) == ["dev", "main"]
    got = run_client(DOWNLOAD, client_env(hub, tmp_path / "c"),
                     args={"repo": REPO, "filename": "model.safetensors", "revision": "dev"})
    assert Path(got["path"]).read_bytes() == b"dev"


# --------------------------------------------------------------------------- offline / faults


def test_offline_cache_after_server_stops(tmp_path):
    hub = start_hub_server([WRITE])
    weights = os.urandom(3000)
    try:
        upload(hub, tmp_path, make_folder(tmp_path, weights))
        online = client_env(hub, tmp_path / "consumer", token=WRITE)
        first = run_client(DOWNLOAD, online, args={"repo": REPO, "filename": "model.safetensors"})
        run_client(f'from huggingface_hub import snapshot_download; snapshot_download("{REPO}")', online)
    finally:
        hub.stop()
    url = hub.url

    # HF_HUB_OFFLINE=1: no HTTP call at all, the cached files resolve.
    offline = client_env(url, tmp_path / "consumer", offline=True)
    again = run_client(DOWNLOAD, offline, args={"repo": REPO, "filename": "model.safetensors"})
    assert again == first and again["sha256"] == sha256(weights)
    snap = run_client(f'from huggingface_hub import snapshot_download; emit(snapshot_download("{REPO}"))', offline)
    assert (Path(snap) / "config.json").is_file()
    err = run_client(DOWNLOAD, offline, args={"repo": REPO, "filename": "never-downloaded.bin"}, expect_error=True)
    assert err["type"] == "LocalEntryNotFoundError"
    assert {"FileNotFoundError", "EntryNotFoundError"} <= set(err["mro"])
    err = run_client(DOWNLOAD, offline, args={"repo": "zoo-tester/other", "filename": "config.json"},
                     expect_error=True)
    assert err["type"] == "LocalEntryNotFoundError"

    # Not offline but the server is gone (connection refused): the cache is used as well.
    down = client_env(url, tmp_path / "consumer", offline=False)
    assert run_client(DOWNLOAD, down, args={"repo": REPO, "filename": "model.safetensors"}) == first
    # (Not tested: an uncached file with the server down and HF_HUB_OFFLINE=0 also ends in
    # LocalEntryNotFoundError, but only after the client's connection retries with backoff, ~25 s.)


def test_corrupt_flip_is_not_detected_by_the_client(hub, tmp_path):
    weights = os.urandom(5000)
    upload(hub, tmp_path, make_folder(tmp_path, weights))
    hub.corrupt(REPO, "model.safetensors")
    hub.corrupt(REPO, "config.json")
    env = client_env(hub, tmp_path / "consumer")
    got = run_client(DOWNLOAD, env, args={"repo": REPO, "filename": "model.safetensors"})
    data = Path(got["path"]).read_bytes()
    assert len(data) == len(weights) and data != weights
    assert got["sha256"] != sha256(weights)  # a downstream sha256 check must catch this...
    cache = Path(env["HF_HUB_CACHE"]) / "models--zoo-tester--tiny-ae"
    # ...because huggingface_hub does not: the bad bytes are cached under the *good* sha256 name.
    assert (cache / "blobs" / sha256(weights)).read_bytes() == data
    cfg = run_client(DOWNLOAD, env, args={"repo": REPO, "filename": "config.json"})
    assert Path(cfg["path"]).read_bytes() != (tmp_path / "export" / "config.json").read_bytes()

    # Once the cached copy is removed (or force_download=True), a healthy server gives good bytes.
    hub.uncorrupt()
    fixed = run_client(
        "import hashlib; from huggingface_hub import hf_hub_download\n"
        "p = hf_hub_download(ARGS['r'], 'model.safetensors', force_download=True)\n"
        "emit(hashlib.sha256(open(p, 'rb').read()).hexdigest())", env, args={"r": REPO})
    assert fixed == sha256(weights)


def test_corrupt_truncate_fails_and_caches_nothing(hub, tmp_path):
    weights = os.urandom(5000)
    upload(hub, tmp_path, make_folder(tmp_path, weights))
    hub.corrupt(REPO, "model.safetensors", mode="truncate")
    env = client_env(hub, tmp_path / "consumer")
    err = run_client(DOWNLOAD, env, args={"repo": REPO, "filename": "model.safetensors"}, expect_error=True)
    assert err["type"] == "OSError" and "Consistency check failed" in err["message"]
    blobs = Path(env["HF_HUB_CACHE"]) / "models--zoo-tester--tiny-ae" / "blobs"
    assert not blobs.exists() or not any(blobs.iterdir())


# --------------------------------------------------------------------------- protocol details


def _post_json(url, payload, token=WRITE):
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req) as resp:
        return json.loads(resp.read())


def test_lfs_put_with_wrong_sha256_is_rejected(hub):
    _post_json(f"{hub.url}/api/repos/create", {"name": "tiny-ae", "organization": "zoo-tester"})
    good = b"x" * 100
    batch = _post_json(f"{hub.url}/{REPO}.git/info/lfs/objects/batch",
                       {"operation": "upload", "transfers": ["basic"], "hash_algo": "sha256",
                        "objects": [{"oid": sha256(good), "size": len(good)}]})
    href = batch["objects"][0]["actions"]["upload"]["href"]
    assert href.startswith(hub.cdn_url)
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(urllib.request.Request(href, data=b"y" * 100, method="PUT"))
    assert exc.value.code == 400 and "sha256 mismatch" in json.loads(exc.value.read())["error"]
    assert sha256(good) not in hub.repo(REPO).lfs
    with urllib.request.urlopen(urllib.request.Request(href, data=good, method="PUT")) as resp:
        assert resp.status == 200
    assert hub.repo(REPO).lfs[sha256(good)] == good
    # A commit may only reference uploaded LFS objects.
    body = "\n".join(json.dumps(x) for x in [
        {"key": "header", "value": {"summary": "bad"}},
        {"key": "lfsFile", "value": {"path": "w.bin", "algo": "sha256", "oid": "0" * 64, "size": 1}},
    ]).encode()
    req = urllib.request.Request(f"{hub.url}/api/models/{REPO}/commit/main", data=body, method="POST",
                                 headers={"Authorization": f"Bearer {WRITE}", "Content-Type": "application/x-ndjson"})
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(req)
    assert exc.value.code == 422


def test_resolve_headers(hub, tmp_path):
    weights = os.urandom(777)
    oid = upload(hub, tmp_path, make_folder(tmp_path, weights))["oid"]

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as exc:  # urllib surfaces the unfollowed 302 as an error
        opener.open(urllib.request.Request(f"{hub.url}/{REPO}/resolve/main/model.safetensors", method="HEAD"))
    h = exc.value.headers
    assert exc.value.code == 302 and h["Location"].startswith(hub.cdn_url)
    assert h["X-Linked-Etag"] == f'"{sha256(weights)}"' and h["X-Linked-Size"] == "777"
    assert h["X-Repo-Commit"] == oid
    with opener.open(urllib.request.Request(f"{hub.url}/{REPO}/resolve/{oid}/config.json", method="HEAD")) as r:
        cfg = (tmp_path / "export" / "config.json").read_bytes()
        assert r.headers["ETag"] == '"%s"' % hashlib.sha1(b"blob %d\0" % len(cfg) + cfg).hexdigest()
        assert r.headers["Content-Length"] == str(len(cfg)) and r.headers["X-Repo-Commit"] == oid
    with pytest.raises(urllib.error.HTTPError) as exc:
        opener.open(f"{hub.url}/{REPO}/resolve/main/nope.txt")
    assert exc.value.code == 404 and exc.value.headers["X-Error-Code"] == "EntryNotFound"


def test_in_process_client_with_explicit_endpoint(hub):
    """Plain API calls work in-process if the endpoint is passed explicitly (no env needed)."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub.url, token=WRITE)
    assert api.whoami()["name"] == hub.username
    api.create_repo(REPO, private=True)
    info = api.model_info(REPO)
    assert info.private is True and info.sha == hub.repo(REPO).branches["main"]
    assert [s.rfilename for s in info.siblings] == [".gitattributes"]
