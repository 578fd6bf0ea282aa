"""Attacks on a TorchServe started with ``zoo serve``'s defaults (``server.start``) on 127.0.0.1: each must fail.

One server serves a small pretrained model. Its run directory is made to look
like one an older zoo left behind (0755, a world-readable config, an archive
planted in the workflow store) before it starts. The tests then try what a
local user, or a holder of the management key, could do:

- read the key file while TorchServe writes it (it creates the file 0644 and only then chmods it);
- read anything else in the run directory;
- run code through the workflow API, which ``enable_model_api=false`` does not cover: TorchServe
  copies the URL's file into the workflow store before it checks for ``..``, and a registered
  workflow's handler runs in a worker. The archive used here writes a marker file when imported.
"""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import tarfile
import threading
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from zoo.serving import PackageOptions, ServingError, client, package, server

MODEL = "dense-vae-mnist-2d"
PRIVATE_BITS = stat.S_IRWXG | stat.S_IRWXO


def workflow_files(marker: Path) -> dict[str, str]:
    """A workflow archive's files: one function node whose handler writes ``marker`` when it is imported."""
    manifest = {"createdOn": "01/01/2025 00:00:00", "archiverVersion": "0.2.0",
                "workflow": {"workflowName": "evil", "specFile": "spec.yaml", "handler": "handler.py"}}
    return {
        "WAR-INF/MANIFEST.json": json.dumps(manifest),
        "spec.yaml": "models:\n  min-workers: 1\ndag:\n  pwn: []\n",
        "handler.py": f"import pathlib\npathlib.Path({str(marker)!r}).write_text('pwned')\n\n\n"
                      "def pwn(data, context):\n    return data\n",
    }


def write_war(path: Path, files: dict[str, str]) -> Path:
    """A ``.war``: the zip TorchServe unpacks for a workflow file ending in .war."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return path


def write_tar_gz(path: Path, files: dict[str, str]) -> Path:
    """The same workflow as a tar.gz, which TorchServe unpacks for any other name (here one ending in .mar).

    TorchServe drops each entry's first path component, so the files sit in a top folder.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as archive:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"workflow/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


class KeyFileWatcher(threading.Thread):
    """Stats the key file in a tight loop and records every mode it is seen with."""

    def __init__(self, path: Path):
        super().__init__(daemon=True)
        self.path, self.modes, self.seen, self.done = path, set(), 0, threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                self.modes.add(stat.S_IMODE(os.stat(self.path).st_mode))
                self.seen += 1
            except FileNotFoundError:
                pass


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    """A server started by ``server.start`` with its defaults, in a run directory an older zoo left 0755."""
    tmp = tmp_path_factory.mktemp("secure")
    mar = package(MODEL, tmp / "mars", PackageOptions())
    run = tmp / "run"
    (run / "workflow-store").mkdir(parents=True)
    run.chmod(0o755)
    (run / "config.properties").write_text("# left by an older zoo\n")
    (run / "config.properties").chmod(0o644)
    planted = write_war(run / "workflow-store" / "planted.war", workflow_files(tmp / "PLANTED"))
    watcher = KeyFileWatcher(run / server.KEY_FILE)
    watcher.start()
    try:
        state = server.start([mar], run)
    finally:
        watcher.done.set()
        watcher.join()
    try:
        yield SimpleNamespace(state=state, run=run, tmp=tmp, mar=mar, watcher=watcher, planted=planted)
    finally:
        server.stop(run)


def management(secured, method: str, path: str) -> client.Reply:
    """A management API call with the management key: its status and JSON body."""
    request = urllib.request.Request(f"{secured.state.management_url}{path}", data=b"" if method != "GET" else None,
                                     method=method, headers=secured.state.headers("management"))
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return client.Reply(response.status, json.loads(response.read() or b"{}"))
    except urllib.error.HTTPError as exc:
        return client.Reply(exc.code, json.loads(exc.read() or b"{}"))


def register_workflow(secured, url: str) -> client.Reply:
    return management(secured, "POST", "/workflows?url=" + urllib.parse.quote(url, safe=""))


def listing(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir()}


# --------------------------------------------------------------------------------------------
# The key file and the run directory


def test_the_key_file_is_never_readable_by_others_while_torchserve_writes_it(secured):
    assert secured.watcher.seen > 0, "the watcher never saw the key file"
    assert all(mode & PRIVATE_BITS == 0 for mode in secured.watcher.modes), sorted(map(oct, secured.watcher.modes))
    # Whatever TorchServe creates later (a renewed key file, logs, unpacked models) is private too.
    for pid in server.group_pids(secured.state.pgid):
        status = Path(f"/proc/{pid}/status").read_text()
        umask = next(line.split()[1] for line in status.splitlines() if line.startswith("Umask:"))
        assert umask == "0077", (pid, umask)


def test_the_run_directory_and_everything_in_it_are_private(secured):
    assert stat.S_IMODE(secured.run.lstat().st_mode) == 0o700
    paths = [secured.run / server.KEY_FILE, secured.run / server.STATE_FILE, secured.run / "config.properties",
             secured.run / "logs" / "ts_log.log", secured.run / "model-store" / secured.mar.name]
    assert all(p.exists() for p in paths), [p for p in paths if not p.exists()]
    everything = [Path(root) / name for root, dirs, files in os.walk(secured.run) for name in dirs + files]
    exposed = {str(p): oct(stat.S_IMODE(p.lstat().st_mode)) for p in everything
               if p.lstat().st_mode & PRIVATE_BITS}
    assert not exposed, exposed


def test_the_workflow_store_is_private_and_recreated_empty(secured):
    properties = (secured.run / "config.properties").read_text()
    store = secured.run / "workflow-store"
    assert f"workflow_store={store}" in properties
    assert not secured.planted.exists() and stat.S_IMODE(store.stat().st_mode) == 0o700
    assert management(secured, "POST", "/workflows?url=planted.war").status == 404
    assert not (secured.tmp / "PLANTED").exists()


# --------------------------------------------------------------------------------------------
# Code execution through the workflow API


def test_a_workflow_from_outside_the_model_store_is_neither_copied_nor_registered(secured):
    store, workflow_store = secured.run / "model-store", secured.run / "workflow-store"
    marker = secured.tmp / "PWNED"
    files = workflow_files(marker)
    war = write_war(secured.tmp / "outside" / "evil.war", files)
    # A directory whose name differs from the run directory's only in case: matched case-insensitively
    # by TorchServe unless allowed_urls turns that off. A .mar name, so only a tar.gz workflow fits.
    look_alike = write_tar_gz(secured.tmp / secured.run.name.upper() / "model-store" / "evil.mar", files)
    up = os.path.relpath(war, store)
    encoded = up.replace("..", "%2e%2e")  # sent as %252e: Netty decodes the query, Java's file URL decodes %2e
    attacks = [f"file://{store}/{up}", f"file://{store}/{encoded}", f"FILE://{store}/{up}",
               f"file://{store}/{encoded.replace('%2e', '%2E')}", f"file://{look_alike}"]
    before = listing(store), listing(workflow_store)
    for url in attacks:
        reply = register_workflow(secured, url)
        assert 400 <= reply.status < 500, (url, reply)
        assert (listing(store), listing(workflow_store)) == before, url
    for name in (war.name, look_alike.name):  # what a copy above would have been registered as
        reply = management(secured, "POST", f"/workflows?url={name}")
        assert 400 <= reply.status < 500, (name, reply)
    assert management(secured, "GET", "/workflows").body == {"workflows": []}
    assert not marker.exists(), "a workflow handler ran"


def test_allowed_urls_still_admits_a_plain_mar_name_in_the_store(secured):
    # The control for the test above: TorchServe reads the anchored pattern as meant, it does not just match nothing.
    url = f"file://{secured.run / 'model-store' / secured.mar.name}"
    reply = register_workflow(secured, url)
    assert "does not match any allowed URL" not in reply.body.get("message", ""), reply
    copy = secured.run / "workflow-store" / secured.mar.name
    assert copy.read_bytes() == secured.mar.read_bytes() and copy.stat().st_mode & PRIVATE_BITS == 0
    copy.unlink()


# --------------------------------------------------------------------------------------------
# Still a working server; run directories that cannot be made safe are refused


def test_the_defaults_still_serve_a_prediction_through_zoo_predict(secured):
    request = json.dumps({"task": "decode", "latent": [0.25, -0.5]}, indent=40)  # a long inline JSON argument
    assert len(request) > 255
    result = subprocess.run([sys.executable, "-m", "zoo.cli", "predict", MODEL, request, "--dir", str(secured.run)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert reply["task"] == "decode" and reply["image"].startswith("<")


def refusal(mar: Path, directory: Path) -> str:
    """The ServingError ``start`` gives for ``directory``; a failure (after stopping it) if a server started."""
    try:
        server.start([mar], directory, timeout=60)
    except ServingError as exc:
        return str(exc)
    server.stop(directory)
    pytest.fail(f"start() accepted {directory}")


def test_a_symlinked_or_unwritable_run_directory_is_refused_before_anything_is_made(secured, tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    assert "symlink" in refusal(secured.mar, tmp_path / "link")
    assert list(target.iterdir()) == []
    comma = tmp_path / "a,b"
    assert "cannot be configured safely" in refusal(secured.mar, comma)
    assert not comma.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")
def test_a_run_directory_owned_by_another_user_is_refused(secured, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    os.chown(other, 12345, 12345)
    assert "belongs to another user" in refusal(secured.mar, other)
    assert list(other.iterdir()) == []
