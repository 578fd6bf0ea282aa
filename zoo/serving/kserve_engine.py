"""``zoo serve --engine kserve``: KServe's own model server for one zoo archive, on 127.0.0.1.

It runs :mod:`zoo.serving.kserve_server` on the same self-contained ``.mar``
that TorchServe would serve, from the same private run directory (0700, umask
077) and with the same ``server.json``, so ``zoo serve --stop`` and ``zoo
predict`` work unchanged. KServe's server has no token authorization: it
listens on loopback only, REST and gRPC alike.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from zoo.serving.package import ServingError
from zoo.serving.server import (LOOPBACK, STATE_FILE, ServerState, free_port, log_tail, private_dir, private_umask,
                                refuse_if_running, run_dir, stop)

INSTALL_HINT = "pip install 'ae-zoo[kserve]'"
LOG = "kserve.log"


def require_kserve() -> None:
    """A ServingError with the install line when the ``kserve`` extra is missing."""
    if importlib.util.find_spec("kserve") is None:
        raise ServingError(f"--engine kserve needs KServe's model server: {INSTALL_HINT}")


def start(mar: Path, directory: str | Path | None = None, *, http_port: int = 0, grpc_port: int = 0,
          batch_size: int = 8, max_batch_delay: int = 5, python: str | None = None,
          timeout: float = 180.0) -> ServerState:
    """Start KServe's model server on ``mar`` and wait until the model is ready."""
    require_kserve()
    directory = run_dir(directory)
    refuse_if_running(directory)
    name = Path(mar).stem
    http_port = http_port or free_port()
    grpc_port = grpc_port or free_port()
    with private_umask():
        private_dir(directory)
        (directory / STATE_FILE).unlink(missing_ok=True)
        for sub in ("logs", "tmp", "model-store"):
            (directory / sub).mkdir(exist_ok=True)
        served = directory / "model-store" / Path(mar).name  # inside the run dir, so `stop` knows the process
        if Path(mar).resolve() != served.resolve():
            shutil.copyfile(mar, served)
        log = open(directory / "logs" / LOG, "ab")
    command = [python or sys.executable, "-m", "zoo.serving.kserve_server", "--model_name", name,
               "--model_dir", str(served), "--host", LOOPBACK, "--http_port", str(http_port),
               "--grpc_port", str(grpc_port), "--max_batch_size", str(batch_size),
               "--max_batch_delay_ms", str(max_batch_delay)]
    env = {**os.environ, "TMPDIR": str(directory / "tmp"), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    process = subprocess.Popen(command, cwd=directory, env=env, stdin=subprocess.DEVNULL, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True, umask=0o077)
    log.close()
    url = f"http://{LOOPBACK}:{http_port}"
    state = ServerState(pid=process.pid, pgid=os.getpgid(process.pid), directory=str(directory),
                        inference_url=url, management_url="", metrics_url=url, grpc_inference_port=grpc_port,
                        grpc_management_port=0, models=[name], auth=False, key_file=None, started=time.time(),
                        engine="kserve")
    state.write()
    try:
        wait_ready(state, process, timeout)
    except BaseException:
        stop(directory)
        raise
    return state


def wait_ready(state: ServerState, process: subprocess.Popen, timeout: float) -> None:
    """Poll ``/v2/models/NAME/ready`` until it answers 200."""
    deadline = time.monotonic() + timeout
    url = f"{state.inference_url}/v2/models/{state.models[0]}/ready"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServingError(f"KServe's model server exited with status {process.returncode} while starting; "
                               f"see {state.directory}/logs\n{log_tail(Path(state.directory), names=(LOG,))}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise ServingError(f"KServe's model server was not ready within {timeout:.0f} s; see {state.directory}/logs")

