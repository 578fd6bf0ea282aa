"""``zoo package``, ``zoo serve`` and ``zoo predict``: TorchServe archives, a local server and its client."""

import json
import signal
import sys
import time
from pathlib import Path

import click

from zoo.cli.app import main


def _handler_options(half: bool, compile_: bool, warmup: bool) -> dict:
    return {"half": half, "compile": compile_, "warmup": warmup}


def _package_options(batch_size, max_batch_delay, workers, half=False, compile_=False, warmup=True, deps="check"):
    from zoo.serving import PackageOptions

    return PackageOptions(batch_size=batch_size, max_batch_delay=max_batch_delay, workers=workers,
                          handler=_handler_options(half, compile_, warmup), deps=deps)


#: zoo.serving.package.DEPENDENCY_MODES (spelled out so that --help imports no serving code).
DEPENDENCY_MODES = ("check", "bundle", "requirements")


def deps_option(help_text: str):
    return click.option("--deps", type=click.Choice(DEPENDENCY_MODES), default=DEPENDENCY_MODES[0],
                        show_default=True, help=help_text)


batch_options = [
    click.option("--batch-size", type=click.IntRange(1, 1024), default=8, show_default=True,
                 help="TorchServe dynamic batch size."),
    click.option("--max-batch-delay", type=click.IntRange(0, 60000), default=5, show_default=True,
                 help="Milliseconds TorchServe waits to fill a batch."),
    click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True, help="Workers per model."),
    click.option("--half", is_flag=True, help="float16 autocast on CUDA (ignored on CPU)."),
    click.option("--compile", "compile_", is_flag=True, help="torch.compile the model, compiled during warm-up."),
]


def with_batch_options(func):
    for option in reversed(batch_options):
        func = option(func)
    return func


@main.command("package")
@click.argument("models", nargs=-1, required=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True,
              help="Folder for the .mar files.")
@with_batch_options
@click.option("--kserve", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write KServe's layout here: config/config.properties and model-store/*.mar.")
@deps_option("The plugin's own dependencies (beyond ae-zoo and TorchServe's runtime): check = the handler checks "
             "at load that they are installed; bundle = copy them (pure Python only) into the archive; "
             "requirements = add a requirements.txt that TorchServe installs when install_py_dep_per_model=true.")
def package_command(models, out, batch_size, max_batch_delay, workers, half, compile_, kserve, deps):
    """Build self-contained TorchServe archives (NAME.mar) for registered models or checkpoint folders."""
    from zoo.serving import package, write_kserve
    from zoo.serving.package import read_manifest

    options = _package_options(batch_size, max_batch_delay, workers, half, compile_, deps=deps)
    mars = []
    for model in models:
        mar = package(model, out, options)
        mars.append(mar)
        click.echo(f"wrote {mar}")
        _describe_dependencies(read_manifest(mar), deps)
    if kserve is not None:
        config = write_kserve(mars, kserve, options)
        click.echo(f"wrote {config} and {kserve / 'model-store'}")


def _describe_dependencies(manifest: dict, deps: str) -> None:
    """One line about the plugin's own dependencies, when it has any."""
    listed = manifest.get("dependencies") or []
    if not listed:
        return
    names = ", ".join(d["name"] + d.get("specifier", "") for d in listed)
    if deps == "bundle":
        click.echo(f"  bundled the plugin's dependencies: {names}")
    elif deps == "requirements":
        click.echo(f"  requirements.txt lists the plugin's dependencies: {names} (TorchServe installs them only "
                   "with install_py_dep_per_model=true)")
    else:
        click.echo(f"  the plugin needs {names} installed in the TorchServe environment (or use --deps bundle)")


@main.command("serve")
@click.argument("models", nargs=-1)
@click.option("--port", type=click.IntRange(0, 65535), default=0, help="Inference port (default: a free one).")
@with_batch_options
@click.option("--no-auth", is_flag=True, help="Turn token authorization off (local testing only).")
@click.option("--foreground", is_flag=True, help="Stay attached; Ctrl-C stops the server.")
@click.option("--stop", "stop_", is_flag=True, help="Stop the server that `zoo serve` started.")
@click.option("--timeout", type=float, default=300, show_default=True, help="Seconds to wait for READY workers.")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run directory (default: $ZOO_SERVE_DIR or ~/.cache/zoo/serve).")
@click.option("--engine", type=click.Choice(["torchserve", "kserve"]), default="torchserve", show_default=True,
              help="TorchServe, or KServe's own model server (one model; needs ae-zoo[kserve]).")
@click.option("--http-port", type=click.IntRange(0, 65535), default=0, help="--engine kserve: REST port.")
@click.option("--grpc-port", type=click.IntRange(0, 65535), default=0, help="--engine kserve: gRPC port.")
@deps_option("The plugins' own dependencies, for the archives it builds (see `zoo package --help`); "
             "requirements also turns TorchServe's install_py_dep_per_model on: it runs pip (network access) "
             "for each model that carries a requirements.txt when it loads.")
def serve_command(models, port, batch_size, max_batch_delay, workers, half, compile_, no_auth, foreground, stop_,
                  timeout, directory, engine, http_port, grpc_port, deps):
    """Serve models on 127.0.0.1 until `zoo serve --stop`: TorchServe, or KServe's model server.

    MODELS are registered names, checkpoint folders or .mar files. They are
    packaged (an archive built earlier is reused while nothing in it changed),
    the server starts and the command returns once every model is ready.
    """
    from zoo.serving import server
    from zoo.serving.package import package_cached

    directory = server.run_dir(directory)
    if stop_:
        if models:
            raise click.UsageError("--stop takes no model names")
        stopped = server.stop(directory)
        click.echo(f"stopped the server in {directory}" if stopped else f"no server was started from {directory}")
        return
    if not models:
        raise click.UsageError("name at least one model to serve (see `zoo list`)")
    if engine == "kserve" and deps == "requirements":
        raise click.UsageError("--deps requirements needs TorchServe, which installs an archive's requirements.txt; "
                               "with --engine kserve use --deps bundle, or install the dependencies yourself")
    server.refuse_if_running(directory)  # before packaging: a running server is reported at once
    options = _package_options(batch_size, max_batch_delay, workers, half, compile_, deps=deps)
    mars = []
    with server.private_umask():  # the run directory and the archives built in it are private to the user
        build = server.private_dir(server.private_dir(directory) / "build")
        for model in models:
            is_mar = str(model).endswith(".mar") and Path(model).is_file()
            mars.append(Path(model) if is_mar else package_cached(model, build, options))
    if engine == "kserve":
        state = _start_kserve(mars, directory, http_port, grpc_port, batch_size, max_batch_delay, timeout)
    else:
        if http_port or grpc_port:
            raise click.UsageError("--http-port and --grpc-port are for --engine kserve; TorchServe takes --port")
        click.echo(f"starting TorchServe for {', '.join(m.stem for m in mars)} ...", err=True)
        # TorchServe installs an archive's requirements.txt only with install_py_dep_per_model, which
        # zoo serve leaves off (it runs pip at load) unless asked for with --deps requirements.
        extra = {"install_py_dep_per_model": "true"} if deps == "requirements" else None
        state = server.start(mars, directory, port=port, auth=not no_auth, batch_size=batch_size,
                             max_batch_delay=max_batch_delay, workers=workers, timeout=timeout,
                             extra_properties=extra)
    _describe(state, directory, foreground)
    if foreground:
        _wait_in_foreground(state, directory)


def _start_kserve(mars, directory, http_port, grpc_port, batch_size, max_batch_delay, timeout):
    from zoo.serving import kserve_engine

    if len(mars) != 1:
        raise click.UsageError("--engine kserve serves one model per server; start one per --dir")
    click.echo(f"starting KServe's model server for {mars[0].stem} ...", err=True)
    return kserve_engine.start(mars[0], directory, http_port=http_port, grpc_port=grpc_port,
                               batch_size=batch_size, max_batch_delay=max_batch_delay, timeout=timeout)


def _describe(state, directory, foreground) -> None:
    from zoo.serving import server

    for line in _endpoint_lines(state):
        click.echo(line)
    click.echo(f"logs:       {directory / 'logs'}")
    if not foreground:
        click.echo("stop with:  zoo serve --stop" + (f" --dir {directory}" if directory != server.run_dir() else ""))


def _endpoint_lines(state) -> list[str]:
    if state.engine == "kserve":
        name = state.models[0]
        return [f"v1:         {state.inference_url}/v1/models/{name}:predict",
                f"v2:         {state.inference_url}/v2/models/{name}/infer",
                f"gRPC:       127.0.0.1:{state.grpc_inference_port} (v2 inference)",
                f"metrics:    {state.metrics_url}/metrics",
                "auth:       none (KServe's server has no tokens; it listens on 127.0.0.1 only)"]
    auth = (f"key file:   {state.key_file} (send: Authorization: Bearer <inference key>)" if state.auth
            else "auth:       OFF (--no-auth)")
    return [f"inference:  {state.inference_url}/predictions/<model>",
            f"management: {state.management_url}",
            f"metrics:    {state.metrics_url}/metrics",
            f"gRPC:       127.0.0.1:{state.grpc_inference_port} (inference), "
            f"127.0.0.1:{state.grpc_management_port} (management)",
            f"models:     {', '.join(state.models)}",
            auth]


def _wait_in_foreground(state, directory) -> None:
    from zoo.serving import server

    click.echo("serving in the foreground; Ctrl-C stops the server")
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    try:
        while not stopping and state.alive():
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop(directory)
        click.echo("stopped", err=True)


@main.command("predict")
@click.argument("model")
@click.argument("input")
@click.option("--task", default=None, help="Task to run (default: the model's default task for images).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the output image(s) as PNG, or the JSON reply, to this file.")
@click.option("--show", is_flag=True, help="Also draw the output image(s) in the terminal.")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run directory of the server (default: $ZOO_SERVE_DIR or ~/.cache/zoo/serve).")
def predict_command(model, input, task, out, show, directory):
    """Send INPUT (an image file, a JSON file or a JSON string) to MODEL on the server `zoo serve` started.

    \b
    zoo predict MODEL digit.png --out recon.png
    zoo predict MODEL '{"task": "sample", "n": 4, "seed": 0}' --out samples.png
    """
    from zoo.serving.client import predict, save_outputs

    reply = predict(model, input, task=task, directory=directory)
    if not reply.ok:
        message = reply.body.get("message") or reply.body.get("error") or json.dumps(reply.body)
        raise click.ClickException(f"HTTP {reply.status}: {message}")
    if out is not None:
        for path in save_outputs(reply.body, out):
            click.echo(f"wrote {path}", err=True)
    shown = {k: (f"<{len(v)} base64 chars>" if k == "image" else [f"<{len(x)} base64 chars>" for x in v]
                 if k == "images" else v) for k, v in reply.body.items()}
    json.dump(shown, sys.stdout, indent=2)
    sys.stdout.write("\n")
    if show:
        from zoo.serving.client import ascii_art

        images = [reply.body["image"]] if "image" in reply.body else reply.body.get("images", [])
        for art in ascii_art(images):
            click.echo(art)
