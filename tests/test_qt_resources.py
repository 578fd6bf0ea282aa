"""Reading photos out of Qt resource bundles (.rcc), as the gcompris-qt-data package ships them."""

import struct
import zlib
from pathlib import Path

import pytest

from zoo.data.qt_resources import read_qt_resources
from zoo.data.sources import Source, debian_qt_resources
from zoo.errors import DataError


def bundle_bytes(tree: dict, version: int = 2, compress: tuple[str, ...] = ()) -> bytes:
    """A Qt resource bundle holding ``tree`` (``{name: bytes | subtree}``), laid out as Qt's rcc lays it out:
    nodes breadth first, so that each directory's children are consecutive; ``compress`` names the files
    stored zlib-compressed behind their length."""
    names, data = bytearray(), bytearray()

    def name_offset(name: str) -> int:
        offset = len(names)
        encoded = name.encode("utf-16-be")
        names.extend(struct.pack(">HI", len(encoded) // 2, 0) + encoded)  # length, hash (unread), UTF-16
        return offset

    entries, nodes = [("", tree)], []  # breadth first: entry i is node i
    for name, content in entries:
        offset = name_offset(name) if nodes else 0
        if isinstance(content, dict):
            nodes.append(struct.pack(">IHII", offset, 2, len(content), len(entries)))
            entries.extend(content.items())
        else:
            payload, flags = content, 0
            if name in compress:
                payload, flags = struct.pack(">I", len(content)) + zlib.compress(content), 1
            nodes.append(struct.pack(">IHHHI", offset, flags, 0, 0, len(data)))
            data.extend(struct.pack(">I", len(payload)) + payload)
        nodes[-1] += b"\0" * 8 if version >= 2 else b""  # modification time
    header_size = 24 if version >= 3 else 20  # version 3 adds a flags word
    tree_blob = b"".join(nodes)
    data_at = header_size + len(tree_blob)
    header = b"qres" + struct.pack(">IIII", version, header_size, data_at, data_at + len(data))
    return header + b"\0" * (header_size - len(header)) + tree_blob + bytes(data) + bytes(names)


PHOTO = b"\xff\xd8 a jpeg, as far as this reader cares" * 20
TREE = {"app": {"README": b"Copyright: someone\nLicense: CC0-1.0\n",
                "images": {"photo.jpg": PHOTO, "icon.svg": b"<svg/>"}}}


@pytest.mark.parametrize("version", [1, 2, 3])
def test_reads_every_file_plain_and_compressed_in_each_format_version(tmp_path, version):
    path = tmp_path / "app.rcc"
    path.write_bytes(bundle_bytes(TREE, version, compress=("photo.jpg",)))

    files = read_qt_resources(path)

    assert files == {":/app/README": TREE["app"]["README"], ":/app/images/photo.jpg": PHOTO,
                     ":/app/images/icon.svg": b"<svg/>"}
    assert read_qt_resources(path, {":/app/images/photo.jpg"}) == {":/app/images/photo.jpg": PHOTO}


def test_a_missing_path_is_named(tmp_path):
    path = tmp_path / "app.rcc"
    path.write_bytes(bundle_bytes(TREE))

    with pytest.raises(DataError, match=r"app\.rcc has no :/app/images/other\.jpg"):
        read_qt_resources(path, {":/app/images/photo.jpg", ":/app/images/other.jpg"})


@pytest.mark.parametrize("damage, message", [
    (lambda b: b"PK\x03\x04" + b[4:], "not a Qt resource bundle"),
    (lambda b: b[:4] + struct.pack(">I", 9) + b[8:], "format version 9"),
    (lambda b: b[:-40], "truncated"),
])
def test_a_damaged_bundle_is_an_error_not_a_wrong_file(tmp_path, damage, message):
    path = tmp_path / "app.rcc"
    path.write_bytes(damage(bundle_bytes(TREE, compress=("photo.jpg",))))

    with pytest.raises(DataError, match=message):
        read_qt_resources(path)


def test_corrupt_compressed_data_is_named(tmp_path):
    blob = bytearray(bundle_bytes({"a.bin": PHOTO}, compress=("a.bin",)))
    start = blob.index(zlib.compress(PHOTO)[:2], 20)
    blob[start + 10:start + 20] = b"\0" * 10
    path = tmp_path / "app.rcc"
    path.write_bytes(bytes(blob))

    with pytest.raises(DataError, match=r":/a\.bin does not decompress|:/a\.bin decompressed to"):
        read_qt_resources(path)


def test_the_debian_source_lays_out_the_wanted_files_of_each_bundle(tmp_path, monkeypatch):
    import zoo.data.sources as sources

    def fake_package(package, files, version=None):
        def unpack(staging: Path) -> Path:
            folder = staging / "root" / "usr/share/app/rcc"
            folder.mkdir(parents=True)
            (folder / "one.rcc").write_bytes(bundle_bytes(TREE, compress=("photo.jpg",)))
            (folder / "two.rcc").write_bytes(bundle_bytes({"x": {"y.png": b"png"}}))
            return staging / "root"
        return Source(f"Debian package {package} {version}", files, unpack)

    monkeypatch.setattr(sources, "debian_package", fake_package)
    source = debian_qt_resources("app-data", {"app-photo.jpg": "usr/share/app/rcc/one.rcc:/app/images/photo.jpg",
                                              "app-y.png": "usr/share/app/rcc/two.rcc:/x/y.png"}, "1.0-1")

    root = source.unpack(tmp_path)

    assert source.label == "Debian package app-data 1.0-1 (Qt resource bundles)"
    assert (root / source.files["app-photo.jpg"]).read_bytes() == PHOTO
    assert (root / source.files["app-y.png"]).read_bytes() == b"png"
    assert sorted(p.name for p in root.rglob("*") if p.is_file()) == ["photo.jpg", "y.png"]  # nothing else

    missing = debian_qt_resources("app-data", {"z": "usr/share/app/rcc/three.rcc:/z.png"}, "1.0-1")
    with pytest.raises(DataError, match=r"has no usr/share/app/rcc/three\.rcc"):
        missing.unpack(tmp_path / "again")
    with pytest.raises(ValueError, match="BUNDLE:/PATH"):
        debian_qt_resources("app-data", {"z": "usr/share/app/rcc/three.rcc"})
