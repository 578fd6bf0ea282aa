"""Starting, waiting for and stopping a local TorchServe that serves zoo archives.

Defaults are the safe ones: every address (inference, management, metrics and
both gRPC) on 127.0.0.1 on free ports, token authorization on, the model API
off, ``allowed_urls`` limited to plain ``.mar`` file names in the model store,
an empty private workflow store, and ``OMP_NUM_THREADS=1`` for the workers on
small machines. The state of a started server lives in a run directory
(``ZOO_SERVE_DIR``, default ``~/.cache/zoo/serve``): its config, model store,
key file, logs and ``server.json`` with the process group, so ``stop`` ends
exactly that server and nothing else. The run directory and everything in it
are private to the user (0700, TorchServe runs with umask 077).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from zoo.serving.package import MAR_VERSION, ServingError, max_request_size
from zoo.serving.properties import allowed_urls, escape, property_path

STATE_FILE = "server.json"
KEY_FILE = "key_file.json"
LOOPBACK = "127.0.0.1"
PRIVATE_UMASK = 0o077


def run_dir(path: str | Path | None = None) -> Path:
    """The run directory: ``path``, else ``$ZOO_SERVE_DIR``, else ``~/.cache/zoo/serve``.

    Made absolute but not resolved, so that a symlink there is refused rather than followed.
    """
    path = path if path is not None else os.environ.get("ZOO_SERVE_DIR")
    if path:
        return Path(os.path.abspath(Path(path).expanduser()))
    return Path.home() / ".cache" / "zoo" / "serve"


@contextmanager
def private_umask() -> Iterator[None]:
    """Within the block, the files and directories this process creates are private to the user (umask 077)."""
    previous = os.umask(PRIVATE_UMASK)
    try:
        yield
    finally:
        os.umask(previous)


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) or take the existing directory, and make it 0700.

    Refuses a symlink, a non-directory and a directory owned by another user:
    the server's keys, code and logs are kept there.
    """
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        raise ServingError(f"{path}: cannot use this as a run directory (it must be a real directory, "
                           f"not a symlink): {exc.strerror}") from None
    try:
        owner = os.fstat(fd).st_uid
        if owner != os.getuid():
            raise ServingError(f"{path}: the run directory belongs to another user (uid {owner})")
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)
    return path


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically, through a new file that only the user can read (0600)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write(text)
    os.replace(tmp, path)


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class ServerConfig:
    """Everything ``config.properties`` says, plus the per-model batching."""

    model_store: Path
    models: list[str]  # .mar file names in the store
    workflow_store: Path  # TorchServe's default is the model store; keep it apart, private and empty
    inference_port: int = 0
    management_port: int = 0
    metrics_port: int = 0
    grpc_inference_port: int = 0
    grpc_management_port: int = 0
    auth: bool = True
    batch_size: int = 8
    max_batch_delay: int = 5
    workers: int = 1
    response_timeout: int = 120
    token_expiration_min: int = 1440
    max_request_size: int | None = None  # the largest body any served model accepts
    netty_threads: int | None = None  # front-end threads; None leaves TorchServe's default (one per core)
    extra: dict[str, str] = field(default_factory=dict)

    def assign_ports(self) -> None:
        taken: set[int] = set()
        for name in ("inference_port", "management_port", "metrics_port", "grpc_inference_port",
                     "grpc_management_port"):
            port = getattr(self, name)
            while not port or port in taken:
                port = free_port()
            taken.add(port)
            setattr(self, name, port)

    def properties(self) -> str:
        """The text of ``config.properties`` (a ServingError if a store path cannot be written safely)."""
        store = Path(self.model_store).resolve()
        models = {
            Path(mar).stem: {MAR_VERSION: {
                "defaultVersion": True, "marName": Path(mar).name, "minWorkers": self.workers,
                "maxWorkers": self.workers, "batchSize": self.batch_size, "maxBatchDelay": self.max_batch_delay,
                "responseTimeout": self.response_timeout,
            }} for mar in self.models
        }
        values = {
            "inference_address": f"http://{LOOPBACK}:{self.inference_port}",
            "management_address": f"http://{LOOPBACK}:{self.management_port}",
            "metrics_address": f"http://{LOOPBACK}:{self.metrics_port}",
            "grpc_inference_address": LOOPBACK,
            "grpc_management_address": LOOPBACK,
            "grpc_inference_port": str(self.grpc_inference_port),
            "grpc_management_port": str(self.grpc_management_port),
            "model_store": property_path(store),
            "workflow_store": property_path(Path(self.workflow_store).resolve()),
            "load_models": ",".join(Path(m).name for m in self.models),
            "models": json.dumps(models, separators=(",", ":")),
            "default_workers_per_model": str(self.workers),
            # Security: no registering models over HTTP; the workflow API (which that does not cover) may
            # only fetch plain .mar names from the store. Java reads backslashes in this file as escapes.
            "enable_model_api": "false",
            "allowed_urls": escape(allowed_urls(store)),
            "disable_token_authorization": "false" if self.auth else "true",
            "token_expiration_min": str(self.token_expiration_min),
            "install_py_dep_per_model": "false",
            "enable_envvars_config": "false",
            "default_response_timeout": str(self.response_timeout),
            "metrics_mode": "prometheus",
            # Workers hand the handler the raw body, so it checks the model's size limit before any JSON parsing.
            "decode_input_request": "false",
            **({"max_request_size": str(self.max_request_size)} if self.max_request_size else {}),
            **({"number_of_netty_threads": str(self.netty_threads), "netty_client_threads": str(self.netty_threads)}
               if self.netty_threads else {}),
            **self.extra,
        }
        lines = ["# Written by ae-zoo (zoo serve)."] + [f"{k}={v}" for k, v in values.items()]
        return "\n".join(lines) + "\n"


@dataclass
class ServerState:
    """What ``server.json`` records about a running server."""

    pid: int
    pgid: int
    directory: str
    inference_url: str
    management_url: str
    metrics_url: str
    grpc_inference_port: int
    grpc_management_port: int
    models: list[str]
    auth: bool
    key_file: str | None
    started: float
    engine: str = "torchserve"  # or "kserve": KServe's own model server (zoo.serving.kserve_engine)

    @classmethod
    def read(cls, directory: Path) -> "ServerState | None":
        path = directory / STATE_FILE
        if not path.is_file():
            return None
        return cls(**json.loads(path.read_text()))

    def write(self) -> None:
        write_private(Path(self.directory) / STATE_FILE, json.dumps(asdict(self), indent=2) + "\n")

    # Tokens and requests -------------------------------------------------------------------

    def keys(self) -> dict[str, str]:
        """The API keys TorchServe wrote, or {} while the key file is absent or still being written."""
        if not self.auth or not self.key_file or not Path(self.key_file).is_file():
            return {}
        try:
            data = json.loads(Path(self.key_file).read_text())
        except ValueError:  # TorchServe creates the file before it fills it
            return {}
        return {k: v["key"] for k, v in data.items() if isinstance(v, dict) and "key" in v}

    def headers(self, api: str = "inference") -> dict[str, str]:
        key = self.keys().get(api)
        return {"Authorization": f"Bearer {key}"} if key else {}

    def predict_url(self, model: str) -> str:
        """Where a native or KServe v1 request for ``model`` goes on this server."""
        if self.engine == "kserve":
            return f"{self.inference_url}/v1/models/{model}:predict"
        return f"{self.inference_url}/predictions/{model}"

    def alive(self) -> bool:
        return _alive(self.pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def torchserve_command(python: str | None = None) -> list[str]:
    """The TorchServe launcher run in the foreground by ``python`` (the workers use the same interpreter)."""
    python = python or sys.executable
    return [python, "-c", "import sys; from ts.model_server import start; sys.exit(start())"]


def start(models: list[Path], directory: str | Path | None = None, *, port: int = 0, auth: bool = True,
          batch_size: int = 8, max_batch_delay: int = 5, workers: int = 1, python: str | None = None,
          timeout: float = 180.0, env: dict[str, str] | None = None, omp_threads: int | None = None,
          extra_properties: dict[str, str] | None = None) -> ServerState:
    """Start TorchServe on the ``.mar`` files ``models`` and wait until every worker is READY.

    The archives are copied into ``<directory>/model-store``. ``python`` picks
    the interpreter (and so the environment) TorchServe and its workers run in.
    The run directory is made private (0700, see :func:`private_dir`); what
    this process and TorchServe (umask 077) create in it is private too.
    """
    directory = run_dir(directory)
    refuse_if_running(directory)
    store = directory / "model-store"
    config = ServerConfig(store, [Path(m).name for m in models], directory / "workflow-store", inference_port=port,
                          auth=auth, batch_size=batch_size, max_batch_delay=max_batch_delay, workers=workers,
                          max_request_size=max_request_size(models), extra=dict(extra_properties or {}),
                          # On a few cores, one front-end thread each way leaves the rest to the workers
                          # (+10-17% req/s at batch 8 in a side run on 2 cores; within noise in serve_throughput.py).
                          netty_threads=1 if (os.cpu_count() or 1) <= 4 else None)
    config.assign_ports()
    properties = config.properties()  # refuses a path that config.properties cannot hold before anything is made
    with private_umask():
        private_dir(directory)
        (directory / STATE_FILE).unlink(missing_ok=True)
        (directory / KEY_FILE).unlink(missing_ok=True)
        # Recreated empty on every start: the workflow store must never hold an archive we did not put there.
        for sub in (store, config.workflow_store, directory / "logs", directory / "tmp"):
            shutil.rmtree(sub, ignore_errors=True)
            sub.mkdir()
        for mar in models:
            shutil.copyfile(mar, store / Path(mar).name)  # not copy2: that would copy the source's mode too
        write_private(directory / "config.properties", properties)
        log = open(directory / "logs" / "launcher.log", "ab")
    cpus = os.cpu_count() or 1
    process_env = {
        **os.environ,
        "TEMP": str(directory / "tmp"),
        "TMPDIR": str(directory / "tmp"),
        "LOG_LOCATION": str(directory / "logs"),
        "METRICS_LOCATION": str(directory / "logs"),
        # Workers inherit this: with several workers on few cores, torch's own threads fight each other.
        "OMP_NUM_THREADS": str(omp_threads or (1 if cpus <= 4 else max(1, cpus // max(1, workers * len(models))))),
        **(env or {}),
    }
    command = torchserve_command(python) + [
        "--start", "--foreground", "--ncs", "--ts-config", str(directory / "config.properties"),
        "--model-store", str(store),
    ]
    if not auth:
        command.append("--disable-token-auth")
    # umask 077 for the JVM and its workers: TorchServe creates key_file.json 0644 and only then chmods it.
    process = subprocess.Popen(command, cwd=directory, env=process_env, stdin=subprocess.DEVNULL, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True, umask=PRIVATE_UMASK)
    log.close()
    state = ServerState(
        pid=process.pid, pgid=os.getpgid(process.pid), directory=str(directory),
        inference_url=f"http://{LOOPBACK}:{config.inference_port}",
        management_url=f"http://{LOOPBACK}:{config.management_port}",
        metrics_url=f"http://{LOOPBACK}:{config.metrics_port}",
        grpc_inference_port=config.grpc_inference_port, grpc_management_port=config.grpc_management_port,
        models=[Path(m).stem for m in models], auth=auth,
        key_file=str(directory / KEY_FILE) if auth else None, started=time.time(),
    )
    state.write()
    try:
        wait_ready(state, timeout=timeout, process=process)
    except BaseException:
        stop(directory)
        raise
    return state


def wait_ready(state: ServerState, timeout: float = 180.0, process: subprocess.Popen | None = None) -> None:
    """Poll the management API until every model has all its workers READY."""
    deadline = time.monotonic() + timeout
    pending = list(state.models)
    last = ""
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ServingError(f"TorchServe exited with status {process.returncode} while starting; "
                               f"see {state.directory}/logs\n{log_tail(Path(state.directory))}")
        if state.auth and not state.keys():
            time.sleep(0.05)
            continue
        still = []
        for name in pending:
            try:
                info = get_json(f"{state.management_url}/models/{name}", state.headers("management"), timeout=5)
                workers = info[0].get("workers", []) if isinstance(info, list) and info else []
                if not workers or any(w.get("status") != "READY" for w in workers):
                    still.append(name)
                    last = f"{name}: workers {[w.get('status') for w in workers]}"
            except (urllib.error.URLError, OSError, ValueError) as exc:
                still.append(name)
                last = f"{name}: {exc}"
        pending = still
        if not pending:
            return
        time.sleep(0.1)
    raise ServingError(f"TorchServe did not become ready within {timeout:.0f} s ({last}); "
                       f"see {state.directory}/logs\n{log_tail(Path(state.directory))}")


def refuse_if_running(directory: Path) -> None:
    """A ServingError if a server started from ``directory`` is still running."""
    existing = ServerState.read(directory)
    if existing is not None and existing.alive():
        raise ServingError(f"a server started from {directory} is already running (pid {existing.pid}); "
                           "stop it with `zoo serve --stop`")


def log_tail(directory: Path, lines: int = 30, names=("model_log.log", "ts_log.log", "launcher.log")) -> str:
    """The last ``lines`` of each of the server's log files ``names`` that exists."""
    parts = []
    for name in names:
        path = directory / "logs" / name
        if path.is_file():
            text = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {name} ---\n" + "\n".join(text))
    return "\n".join(parts)


def stop(directory: str | Path | None = None, timeout: float = 30.0) -> bool:
    """Stop the server started from ``directory``: its whole process group, then forget it.

    Returns False if no server was recorded there. Only the recorded process
    group is signalled (TERM, then KILL after ``timeout``), so other
    TorchServe instances on the machine are untouched.
    """
    directory = run_dir(directory)
    state = ServerState.read(directory)
    if state is None:
        return False
    # Only a group whose processes still name this run directory is ours: a process group id can be
    # reused by an unrelated program after our server died.
    if _group_alive(state.pgid) and _group_mentions(state.pgid, directory):
        try:
            os.killpg(state.pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while _group_alive(state.pgid) and time.monotonic() < deadline:
            _reap(state.pid)
            time.sleep(0.1)
        if _group_alive(state.pgid):
            try:
                os.killpg(state.pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            while _group_alive(state.pgid) and time.monotonic() < deadline + 10:
                _reap(state.pid)
                time.sleep(0.1)
    _reap(state.pid)
    (directory / KEY_FILE).unlink(missing_ok=True)  # the keys die with the server
    (directory / STATE_FILE).unlink(missing_ok=True)
    return True


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is in process group ``pgid``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _group_mentions(pgid: int, directory: Path) -> bool:
    for pid in group_pids(pgid):
        try:
            if str(directory) in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                return True
        except OSError:
            continue
    return False


def group_pids(pgid: int) -> list[int]:
    """Live processes in the process group (the launcher, the JVM and the workers)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                pids.append(int(entry.name))
    return pids


def get_json(url: str, headers: dict[str, str] | None = None, timeout: float = 10) -> Any:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())
