"""A third-party plugin's own dependencies: listed in the archive, checked at load, bundled or installed by TorchServe.

The plugin here is a throwaway distribution (``zoo-dep-plugin``) whose
architecture's module imports ``zoo_test_dep``, a throwaway pure-Python library
(``zoo-test-dep``) that itself needs ``zoo-test-subdep``. Both libraries are
real wheels, installed with ``pip install --target`` into a folder that only
this test process has on ``sys.path``; the plugin also declares requirements
that must *not* be listed (ae-zoo, runtime libraries, an extra, a Windows-only
one). One real TorchServe (127.0.0.1, token auth on) runs in an environment
that has neither ae-zoo nor the libraries, and serves two archives of the
model: one with the libraries bundled, one whose requirements.txt TorchServe
installs itself (from the local wheels, offline).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import zoo
import zoo.plugins
from tests.serving_fixtures import build_runtime_env, python_can_import, random_image
from zoo.cli import main as zoo_cli
from zoo.serving import PackageOptions, ServingError, package, server
from zoo.serving.package import DEPENDENCY_MODES, plan_dependencies, read_manifest
from zoo_handlers.images import decode_png

ARCH = "needs-dep-vae"
NATIVE_ARCH = "needs-native-vae"
PLUGIN_DIST = "zoo-dep-plugin"
OFFSET = 0.25  # zoo_test_subdep.OFFSET: shifts every decoded logit, so a served output proves which code ran
IMAGE_ATOL = 1.0 / 255 + 1e-6

PLUGIN_SOURCE = '''
"""A third-party plugin whose architecture needs a library that neither ae-zoo nor TorchServe provides."""

import dataclasses
import logging

import torch

import zoo
from zoo.components import MLP
from zoo.vae import VAEConfig, VariationalAutoencoder
import {library}

logging.getLogger(__name__).info("{library} loaded from %s", {library}.__file__)


@dataclasses.dataclass
class SmallConfig(VAEConfig):
    hidden: tuple[int, ...] = (16,)
    latent_dim: int = 2


class SmallVAE(VariationalAutoencoder):
    architecture = "{architecture}"
    config_class = SmallConfig

    def __init__(self, config):
        super().__init__(config)
        features = config.image_channels * config.image_size**2
        self.encoder = MLP(features, config.hidden, 2 * config.latent_dim)
        self.decoder = MLP(config.latent_dim, tuple(reversed(config.hidden)), features)

    def posterior(self, x: torch.Tensor):
        return self.encoder(x.flatten(1)).chunk(2, dim=-1)

    def decoder_logits(self, z: torch.Tensor) -> torch.Tensor:
        return {library}.shift(self.decoder(z)).view(-1, *self.input_shape)


@zoo.hookimpl
def register_architectures(register):
    register(SmallVAE)
'''


# --------------------------------------------------------------------------------------------
# Throwaway distributions


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def make_wheel(folder: Path, name: str, version: str, files: dict[str, str], requires=()) -> Path:
    """A pure-Python wheel of distribution ``name`` holding ``files`` (path -> text) and declaring ``requires``."""
    stem = name.replace("-", "_")
    info = f"{stem}-{version}.dist-info"
    contents = {path: text.encode() for path, text in files.items()}
    contents[f"{info}/METADATA"] = ("Metadata-Version: 2.1\n"
                                    f"Name: {name}\nVersion: {version}\n"
                                    + "".join(f"Requires-Dist: {r}\n" for r in requires)).encode()
    contents[f"{info}/WHEEL"] = (b"Wheel-Version: 1.0\nGenerator: ae-zoo-tests\nRoot-Is-Purelib: true\n"
                                 b"Tag: py3-none-any\n")
    record = "".join(f"{path},{_record_hash(data)},{len(data)}\n" for path, data in contents.items())
    contents[f"{info}/RECORD"] = (record + f"{info}/RECORD,,\n").encode()
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{stem}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in contents.items():
            archive.writestr(path, data)
    return wheel


def write_plugin(site: Path, dist: str, module: str, source: str, requires) -> None:
    """A plugin distribution laid out like a pip install: its module, METADATA with Requires-Dist, an entry point."""
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{module}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n"
                                   + "".join(f"Requires-Dist: {r}\n" for r in requires))
    (info / "entry_points.txt").write_text(f"[zoo]\n{dist} = {module}\n")


def write_native_library(site: Path) -> None:
    """An installed distribution with a compiled extension (a dummy .so listed in its RECORD)."""
    package_dir = site / "zoo_test_native"
    package_dir.mkdir()
    files = {"zoo_test_native/__init__.py": "import torch\n\n\ndef shift(x):\n    return x\n",
             "zoo_test_native/_speedups.cpython-311-x86_64-linux-gnu.so": "not really a shared object\n"}
    info = site / "zoo_test_native-2.0.dist-info"
    info.mkdir()
    files["zoo_test_native-2.0.dist-info/METADATA"] = "Metadata-Version: 2.1\nName: zoo-test-native\nVersion: 2.0\n"
    for path, text in files.items():
        (site / path).write_text(text)
    record = "".join(f"{path},{_record_hash(text.encode())},{len(text)}\n" for path, text in files.items())
    (info / "RECORD").write_text(record + "zoo_test_native-2.0.dist-info/RECORD,,\n")


class World:
    """The throwaway distributions, a checkpoint of each throwaway architecture, and archives built from them."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.wheels = tmp / "wheels"
        self.site = tmp / "site"
        self.archives: dict[str, Path] = {}
        make_wheel(self.wheels, "zoo-test-subdep", "0.3", {"zoo_test_subdep/__init__.py": f"OFFSET = {OFFSET}\n"})
        make_wheel(self.wheels, "zoo-test-dep", "1.2", {
            "zoo_test_dep/__init__.py": "from zoo_test_dep.ops import shift\n",
            "zoo_test_dep/ops.py": "from zoo_test_subdep import OFFSET\n\n\ndef shift(x):\n    return x + OFFSET\n",
        }, requires=["zoo-test-subdep>=0.2"])
        wheels = [str(w) for w in self.wheels.glob("*.whl")]
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
                        "--disable-pip-version-check", "--target", str(self.site), *wheels],
                       check=True, capture_output=True, timeout=300)
        write_plugin(self.site, PLUGIN_DIST, "zoo_dep_plugin",
                     PLUGIN_SOURCE.format(library="zoo_test_dep", architecture=ARCH),
                     ["zoo-test-dep>=1.0", "ae-zoo>=0.1", "torch>=2.4", "Pillow>=10", "PyYAML", "pluggy",
                      'zoo-test-extra-only; extra == "fancy"', 'zoo-test-windows-only; sys_platform == "win32"'])
        write_native_library(self.site)
        write_plugin(self.site, "zoo-native-plugin", "zoo_native_plugin",
                     PLUGIN_SOURCE.format(library="zoo_test_native", architecture=NATIVE_ARCH), ["zoo-test-native>=1"])

    def activate(self) -> None:
        sys.path.insert(0, str(self.site))
        zoo.plugins._host = None
        torch.manual_seed(0)
        self.model = zoo.create(ARCH).eval()
        self.folder = self.model.save_pretrained(self.tmp / ARCH)
        self.native_folder = zoo.create(NATIVE_ARCH).save_pretrained(self.tmp / NATIVE_ARCH)

    def deactivate(self) -> None:
        if str(self.site) in sys.path:
            sys.path.remove(str(self.site))
        for module in [m for m in sys.modules if m.split(".")[0] in
                       {"zoo_dep_plugin", "zoo_native_plugin", "zoo_test_dep", "zoo_test_subdep", "zoo_test_native"}]:
            sys.modules.pop(module)
        zoo.plugins._host = None

    def archive(self, mode: str) -> Path:
        if mode not in self.archives:
            self.archives[mode] = package(self.folder, self.tmp / f"store-{mode}", PackageOptions(deps=mode),
                                          name=f"deps-{mode}")
        return self.archives[mode]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    built = World(tmp_path_factory.mktemp("plugin-deps"))
    built.activate()
    try:
        yield built
    finally:
        built.deactivate()


def names_in(mar: Path) -> set[str]:
    with zipfile.ZipFile(mar) as archive:
        return set(archive.namelist())


def unpack(mar: Path, folder: Path) -> Path:
    with zipfile.ZipFile(mar) as archive:
        archive.extractall(folder)
    return folder


def load_in_subprocess(model_dir: Path, extra_path: list[Path] = ()) -> subprocess.CompletedProcess:
    """Load the unpacked archive's handler service in a fresh Python whose path is the archive (and ``extra_path``)."""
    code = ("import sys; from zoo_handlers.service import ZooService; "
            "s = ZooService.from_model_dir(sys.argv[1]); print('LOADED', ','.join(s.tasks))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in [model_dir, *extra_path])
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([sys.executable, "-c", code, str(model_dir)], capture_output=True, text=True, env=env,
                          cwd=model_dir.parent, timeout=300)


# --------------------------------------------------------------------------------------------
# What the archive records


def test_the_manifest_lists_only_the_plugins_own_dependencies(world):
    mar = world.archive("check")
    manifest = read_manifest(mar)
    assert manifest["dependency_mode"] == "check"
    # Not ae-zoo, torch, Pillow, PyYAML or pluggy (runtime), not the extra-only or the Windows-only requirement,
    # and not zoo-test-subdep: pip brings that with zoo-test-dep.
    assert manifest["dependencies"] == [
        {"name": "zoo-test-dep", "specifier": ">=1.0", "bundled": False, "required_by": [PLUGIN_DIST]}]
    names = names_in(mar)
    assert "zoo_dep_plugin.py" in names  # the plugin itself is shipped as source
    assert not any(n.startswith(("zoo_test_dep", "zoo_test_subdep")) for n in names)
    assert "requirements.txt" not in names


def test_a_plugin_without_dependencies_of_its_own_gets_an_empty_list_in_every_mode(tmp_path):
    folder = zoo.create("dense-vae", hidden=[8], latent_dim=2).save_pretrained(tmp_path / "dense")
    assert plan_dependencies(["ae-zoo"], "bundle") == []
    mar = package(folder, tmp_path / "store", PackageOptions(deps="requirements"))
    manifest = read_manifest(mar)
    assert manifest["dependencies"] == []
    names = names_in(mar)
    assert "requirements.txt" not in names
    with zipfile.ZipFile(mar) as archive:
        assert not json.loads(archive.read("MAR-INF/MANIFEST.json")).get("requirementsFile")


def test_unknown_dependency_mode_is_refused(world):
    with pytest.raises(ServingError, match="unknown dependency mode 'vendor'.*check, bundle, requirements"):
        package(world.folder, world.tmp / "never", PackageOptions(deps="vendor"))
    from zoo.cli.serve import DEPENDENCY_MODES as cli_modes

    assert cli_modes == DEPENDENCY_MODES
    result = CliRunner().invoke(zoo_cli, ["package", str(world.folder), "--deps", "vendor"])
    assert result.exit_code == 2 and "--deps" in result.output


# --------------------------------------------------------------------------------------------
# --deps check: the handler names what is missing, before it imports the plugin


def test_check_mode_load_fails_naming_the_missing_dependency_and_the_fix(world, tmp_path):
    model_dir = unpack(world.archive("check"), tmp_path / "unpacked")
    result = load_in_subprocess(model_dir)
    assert result.returncode != 0
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("zoo_handlers.service.MissingDependencyError: model "), result.stderr[-3000:]
    assert f"zoo-test-dep>=1.0 (required by {PLUGIN_DIST}) is not installed" in error
    assert "install zoo-test-dep>=1.0 in the TorchServe environment (pip install 'zoo-test-dep>=1.0')" in error
    assert "`zoo package --deps bundle`" in error
    assert "ModuleNotFoundError" not in result.stderr  # found by the check, not by a failed import of the plugin
    # With the library installed where that Python finds it, the same archive loads.
    result = load_in_subprocess(model_dir, [world.site])
    assert result.returncode == 0 and "LOADED reconstruct" in result.stdout, result.stderr[-3000:]


def test_the_check_names_every_missing_and_mismatched_dependency_in_one_message(world, tmp_path):
    from zoo_handlers.service import MissingDependencyError, check_dependencies, read_manifest as read_unpacked

    model_dir = tmp_path / "m"
    model_dir.mkdir()
    manifest = {"model_name": "m", "dependency_mode": "requirements", "dependencies": [
        {"name": "zoo-test-dep", "specifier": ">=5", "bundled": False, "required_by": [PLUGIN_DIST]},
        {"name": "zoo-test-subdep", "specifier": "", "bundled": False},
        {"name": "zoo-test-absent", "specifier": "==1.0", "bundled": False, "required_by": [PLUGIN_DIST]},
        {"name": "zoo-test-absent-bundled", "specifier": "", "bundled": True},
    ]}
    (model_dir / "zoo-serving.json").write_text(json.dumps(manifest))
    with pytest.raises(MissingDependencyError) as caught:
        check_dependencies(model_dir, read_unpacked(model_dir))
    message = str(caught.value)
    assert f"zoo-test-dep>=5 (required by {PLUGIN_DIST}) is installed at version 1.2" in message
    assert "zoo-test-absent==1.0" in message and "is not installed" in message
    assert "zoo-test-absent-bundled is marked bundled but is not in the archive" in message
    assert "zoo-test-subdep" not in message  # installed, any version
    assert "pip install 'zoo-test-dep>=5' 'zoo-test-absent==1.0'" in message
    assert "install_py_dep_per_model=true" in message and "rebuild the archive" in message


def test_archives_from_before_dependencies_were_recorded_still_load(world, tmp_path):
    from zoo_handlers.service import check_dependencies, read_manifest as read_unpacked

    model_dir = unpack(world.archive("check"), tmp_path / "old")
    manifest = json.loads((model_dir / "zoo-serving.json").read_text())
    del manifest["dependencies"], manifest["dependency_mode"]
    (model_dir / "zoo-serving.json").write_text(json.dumps(manifest))
    loaded = read_unpacked(model_dir)
    assert loaded["dependencies"] == []
    check_dependencies(model_dir, loaded)  # nothing listed, nothing checked
    manifest["dependencies"] = {"zoo-test-dep": ">=1"}
    (model_dir / "zoo-serving.json").write_text(json.dumps(manifest))
    with pytest.raises(RuntimeError, match="must be a list of"):
        read_unpacked(model_dir)


def test_an_undeclared_dependency_gets_a_named_import_error(world, tmp_path):
    """A plugin that imports a library it never declared: the load error names it instead of a bare traceback."""
    from zoo_handlers.service import MissingDependencyError, build_model

    (tmp_path / "zoo_undeclared_plugin.py").write_text("import zoo_test_never_installed\n")
    sys.path.insert(0, str(tmp_path))
    try:
        with pytest.raises(MissingDependencyError, match="no module named 'zoo_test_never_installed'.*Requires-Dist"):
            build_model(world.folder, ["zoo_undeclared_plugin"], torch.device("cpu"))
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("zoo_undeclared_plugin", None)


# --------------------------------------------------------------------------------------------
# --deps bundle and --deps requirements


def test_bundle_mode_copies_the_libraries_and_their_own_dependencies(world, tmp_path):
    mar = world.archive("bundle")
    manifest = read_manifest(mar)
    assert manifest["dependency_mode"] == "bundle"
    assert sorted(manifest["dependencies"], key=lambda d: d["name"]) == [
        {"name": "zoo-test-dep", "specifier": ">=1.0", "bundled": True, "required_by": [PLUGIN_DIST],
         "version": "1.2"},
        {"name": "zoo-test-subdep", "specifier": ">=0.2", "bundled": True, "required_by": ["zoo-test-dep"],
         "version": "0.3"},
    ]
    names = names_in(mar)
    assert {"zoo_test_dep/__init__.py", "zoo_test_dep/ops.py", "zoo_test_subdep/__init__.py",
            "zoo_test_dep-1.2.dist-info/METADATA", "zoo_test_subdep-0.3.dist-info/METADATA"} <= names
    assert not any(n.endswith(("/RECORD", "/INSTALLER")) for n in names)  # records of this installation only
    # Loads where the libraries are not installed: the check finds the bundled copies in the archive.
    result = load_in_subprocess(unpack(mar, tmp_path / "unpacked"))
    assert result.returncode == 0 and "LOADED" in result.stdout, result.stderr[-3000:]


def test_zoo_serve_rebuilds_its_cached_archive_when_the_mode_or_a_bundled_file_changes(world, tmp_path):
    from zoo.serving.package import package_cached

    build = tmp_path / "build"
    checked = package_cached(world.folder, build, PackageOptions(deps="check"))
    assert read_manifest(checked)["dependency_mode"] == "check"
    bundled = package_cached(world.folder, build, PackageOptions(deps="bundle"))
    assert read_manifest(bundled)["dependency_mode"] == "bundle"
    built = bundled.stat().st_mtime_ns
    assert package_cached(world.folder, build, PackageOptions(deps="bundle")).stat().st_mtime_ns == built
    library = world.site / "zoo_test_subdep" / "__init__.py"
    text = library.read_text()
    try:
        library.write_text(text + "# upgraded\n")
        rebuilt = package_cached(world.folder, build, PackageOptions(deps="bundle"))
        assert rebuilt.stat().st_mtime_ns != built
        with zipfile.ZipFile(rebuilt) as archive:
            assert archive.read("zoo_test_subdep/__init__.py").decode().endswith("# upgraded\n")
    finally:
        library.write_text(text)


def test_a_compiled_extension_is_refused_naming_the_package(world):
    with pytest.raises(ServingError) as caught:
        package(world.native_folder, world.tmp / "never", PackageOptions(deps="bundle"))
    message = str(caught.value)
    assert "cannot bundle zoo-test-native>=1 (required by zoo-native-plugin)" in message
    assert "compiled extensions (zoo_test_native/_speedups.cpython-311-x86_64-linux-gnu.so)" in message
    assert "Install zoo-test-native in the TorchServe environment instead" in message
    assert not (world.tmp / "never").exists() or not list((world.tmp / "never").glob("*.mar"))
    listed = plan_dependencies(["zoo-native-plugin"], "check")  # check mode lists it without looking inside
    assert [(d.name, d.specifier, d.bundled) for d in listed] == [("zoo-test-native", ">=1", False)]


def test_bundling_a_dependency_that_is_not_installed_is_refused(world):
    info = world.site / "zoo_orphan_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: zoo-orphan-plugin\nVersion: 1.0\n"
                                   "Requires-Dist: zoo-test-absent>=3\n")
    with pytest.raises(ServingError, match=r"cannot bundle zoo-test-absent>=3 \(required by zoo-orphan-plugin\): "
                                           "it is not installed here"):
        plan_dependencies(["zoo-orphan-plugin"], "bundle")


def test_requirements_mode_puts_a_requirements_file_in_the_archive(world):
    out = world.tmp / "cli-requirements"
    result = CliRunner().invoke(zoo_cli, ["package", str(world.folder), "--out", str(out), "--deps", "requirements"])
    assert result.exit_code == 0, result.output
    assert "requirements.txt lists the plugin's dependencies: zoo-test-dep>=1.0" in result.output
    mar = out / f"{world.folder.name}.mar"
    with zipfile.ZipFile(mar) as archive:
        lines = [line for line in archive.read("requirements.txt").decode().splitlines()
                 if line and not line.startswith("#")]
        assert json.loads(archive.read("MAR-INF/MANIFEST.json"))["model"]["requirementsFile"] == "requirements.txt"
    assert lines == ["zoo-test-dep>=1.0"]
    assert read_manifest(mar)["dependencies"][0]["bundled"] is False


def test_zoo_serve_turns_pip_at_load_on_only_for_deps_requirements(world, tmp_path, monkeypatch):
    seen = []

    def fake_start(mars, directory, **kwargs):
        seen.append(kwargs.get("extra_properties"))
        raise ServingError("stopped by the test before TorchServe starts")

    monkeypatch.setattr(server, "start", fake_start)
    mar = world.archive("check")
    for deps in ("check", "requirements"):
        result = CliRunner().invoke(zoo_cli, ["serve", str(mar), "--dir", str(tmp_path / deps), "--deps", deps])
        assert "stopped by the test" in str(result.exception) or "stopped by the test" in result.output
    assert seen == [None, {"install_py_dep_per_model": "true"}]
    result = CliRunner().invoke(zoo_cli, ["serve", str(mar), "--engine", "kserve", "--deps", "requirements",
                                               "--dir", str(tmp_path / "k")])
    assert result.exit_code == 2 and "--deps requirements needs TorchServe" in result.output


# --------------------------------------------------------------------------------------------
# A real TorchServe without the libraries installed


@pytest.fixture(scope="module")
def served_without_the_libraries(world, tmp_path_factory):
    """One TorchServe (127.0.0.1, auth on) in a venv with neither ae-zoo nor the libraries, serving the bundled
    archive and the requirements archive; install_py_dep_per_model on, with pip offline on the local wheels."""
    tmp = tmp_path_factory.mktemp("serve-deps")
    python = build_runtime_env(tmp / "venv")
    purelib = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  check=True, capture_output=True, text=True).stdout.strip())
    (purelib / "pip").symlink_to(Path(__import__("pip").__file__).parent)  # TorchServe runs `python -m pip`
    mars = [world.archive("bundle"), world.archive("requirements")]
    env = {"PYTHONPATH": "", "PYTHONNOUSERSITE": "1", "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(world.wheels),
           "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_COMPILE": "1"}
    started = time.monotonic()
    state = server.start(mars, tmp / "run", python=str(python), env=env, batch_size=4,
                         max_batch_delay=5, workers=1, timeout=300,
                         extra_properties={"install_py_dep_per_model": "true"})
    try:
        yield state, python, time.monotonic() - started
    finally:
        server.stop(tmp / "run")


def test_torchserve_serves_bundled_and_pip_installed_dependencies_where_they_are_not_installed(
        world, served_without_the_libraries):
    state, python, startup = served_without_the_libraries
    for module in ("zoo", "zoo_dep_plugin", "zoo_test_dep", "zoo_test_subdep"):
        assert not python_can_import(python, module), module
    assert state.auth and state.inference_url.startswith("http://127.0.0.1:")
    png, x = random_image(world.model.input_shape, seed=3)
    expected = world.model.run_task("reconstruct", x.unsqueeze(0))[0]
    for name in state.models:
        status, reply = _post_png(f"{state.inference_url}/predictions/{name}", png, {})
        assert status in (400, 401, 403), (name, status)  # no token, no prediction
        status, reply = _post_png(f"{state.inference_url}/predictions/{name}", png, state.headers())
        assert status == 200, (name, reply)
        assert (decode_png(reply["image"]) - expected.clamp(0, 1)).abs().max() <= IMAGE_ATOL, name
    # The library each worker imported came from that model's own unpacked archive, never from an environment.
    log = (Path(state.directory) / "logs" / "model_log.log").read_text()
    origins = [line.split("zoo_test_dep loaded from ")[1].strip() for line in log.splitlines()
               if "zoo_test_dep loaded from " in line]
    assert len(origins) == 2 and all(o.startswith(str(Path(state.directory) / "tmp" / "models")) for o in origins), \
        origins
    # TorchServe ran pip for the archive with a requirements.txt (and only for it).
    frontend = (Path(state.directory) / "logs" / "ts_log.log").read_text()
    assert "Installed custom pip packages for model deps-requirements" in frontend
    assert "pip packages for model deps-bundle" not in frontend
    print(f"TorchServe start to READY (pip install at load included): {startup:.1f} s")


def _post_png(url: str, png: bytes, headers: dict[str, str]):
    from zoo.serving import client

    reply = client.post(url, png, "image/png", headers, 60)
    return reply.status, reply.body
