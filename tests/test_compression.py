"""zoo.compression and `zoo compress` / `zoo decompress`: round trips, rate control, the format, refusing bad files."""

import dataclasses
import math
import random
import struct
import zlib

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import zoo
import zoo.data
from zoo.cli.app import main
from zoo.compression import (
    Codec,
    CompressedFileError,
    CorruptFileError,
    DecoderMismatchError,
    Header,
    ModelMismatchError,
    NotCompressedFileError,
    TruncatedFileError,
    UnsupportedVersionError,
    pack,
    unpack,
    weights_sha256,
)
from zoo.compression.codec import stored_name
from zoo.compression.entropy import Adaptive, Reader, Writer
from zoo.compression.format import MAGIC, VERSION, fingerprint, header_size
from zoo.compression.quantize import dequantize, step_code, step_of
from zoo.errors import UnsupportedTaskError

torch.set_num_threads(1)
NAME = "conv-vae-mnist"


def digits(n: int, seed: int = 0) -> torch.Tensor:
    """Blurry stroke-like test images (N, 1, 28, 28) in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    images = torch.zeros(n, 1, 28, 28)
    for i in range(n):
        r0, c0 = torch.randint(6, 14, (2,), generator=g).tolist()
        images[i, 0, r0:r0 + 12, c0:c0 + 3] = 1.0
        images[i, 0, r0:r0 + 3, c0:c0 + 8] = 1.0
    return torch.nn.functional.avg_pool2d(images, 3, 1, 1)


def eight_bit(images: torch.Tensor) -> np.ndarray:
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec.load(NAME)


@pytest.fixture(scope="module")
def mnist() -> torch.Tensor:
    """Eight MNIST test digits as (8, 1, 28, 28) floats on the 1/255 grid."""
    return zoo.data.load("mnist", "test").images[:8].float() / 255


@pytest.fixture(scope="module")
def blob(codec) -> bytes:
    return codec.compress(digits(1), step=1.0)[0]


@pytest.fixture(scope="module")
def residual_blob(codec, mnist) -> bytes:
    return codec.compress(mnist[:1], residual_step=16)[0]


def decompress(codec: Codec, data: bytes, path: str = "x.zae") -> torch.Tensor:
    return codec.decode([codec.read(data, path)])[0]


# ---------------------------------------------------------------------------------------------- latent


def test_latent_round_trip_is_model_decode_of_the_dequantized_latent(codec):
    images = digits(8)
    records = [codec.read(b, "x.zae") for b in codec.compress(images, step=0.25)]
    expected = codec.model.decode(torch.stack([dequantize(r.kept, r.symbols, r.step, 32) for r in records]))
    assert torch.equal(codec.decode(records), expected)
    assert ((codec.decode(records) - codec.model.reconstruct(images)).abs().mean()) < 0.02


def test_header_fields(codec, blob):
    header, payload, image_crc = unpack(blob, "x.zae")
    assert blob[:2] == MAGIC and blob[2] == VERSION and image_crc is None
    assert header == Header(NAME, bytes.fromhex(weights_sha256(NAME))[:8], 32, step_code(1.0))
    assert step_of(header.step_code) == 1.0 and header.shape is None  # the model's input shape
    record = codec.read(blob, "x.zae")
    sigma = torch.exp(0.5 * codec.model.posterior(digits(1))[1])[0]
    assert record.kept == tuple(torch.nonzero(sigma < 0.9).flatten().tolist())
    assert 0 < len(record.kept) < 32  # inactive units are dropped
    assert len(record.symbols) == len(record.kept) and record.shape == (1, 28, 28)
    # magic, version, flags, length, packed name (1 + 10), fingerprint, latent dim, step, crc32
    assert header_size(header) == 2 + 1 + 1 + 1 + 11 + 8 + 1 + 1 + 4
    assert len(blob) == header_size(header) + len(payload)


@pytest.mark.parametrize("header", [
    Header(NAME, b"\x01" * 8, 32, 0),
    Header("dense-vae-mnist", b"\xff" * 8, 50, 72, residual_step=1),
    Header("My_Checkpoint.v2 ü", bytes(range(8)), 300, 40, residual_step=255, shape=(3, 1000, 70000)),
    Header("b", bytes(range(8)), 20, 40, shape=(4, 1 << 13, 1 << 14)),
    Header("a" * 127, b"\x00" * 8, 1, 48, shape=(1, 1, 1)),
])
def test_header_round_trip(header):
    payload = bytes(range(13))
    image_crc = 0xDEADBEEF if header.residual_step else None
    data = pack(header, payload, image_crc)
    assert unpack(data, "x.zae") == (header, payload, image_crc)


def test_a_registered_name_is_packed_and_a_folder_is_stored_by_its_name(tmp_path):
    assert len(pack(Header(NAME, b"\0" * 8, 32, 0), b"")) - len(pack(Header("a", b"\0" * 8, 32, 0), b"")) == 10 - 1
    with pytest.raises(ValueError, match="1-127 bytes"):
        pack(Header("x" * 128 + "_", b"\0" * 8, 32, 0), b"")
    folder = tmp_path / "runs" / "my-run"
    folder.mkdir(parents=True)
    assert stored_name(folder) == "my-run" and stored_name(NAME) == NAME and stored_name("hf://org/m") == "hf://org/m"


def test_a_model_without_posterior_keeps_every_dimension():
    model = zoo.create("denoising-ae")
    plain = Codec(model, "denoiser", "00" * 32)
    record = plain.read(plain.compress(digits(1), step=0.0625)[0], "x.zae")
    assert len(record.kept) == model.latent_dim
    z = dequantize(record.kept, record.symbols, record.step, model.latent_dim)
    assert torch.equal(plain.decode([record]), model.decode(z[None]))


def test_latents_are_quantized_in_units_of_a_vamp_priors_spread():
    """A VampPrior can put codes far from N(0, I): the codec scales by the prior's own mean and std."""
    torch.manual_seed(0)
    model = zoo.create("dense-vae", latent_dim=4, prior="vamp", pseudo_inputs=20).eval()
    with torch.no_grad():
        last = model.encoder[-1]
        last.weight[:4] *= 400  # means spread over several units, around an offset of 7
        last.bias[:4] = 7.0
        last.bias[4:] = -6.0  # posterior std 0.05: every unit is kept
        model.vamp_prior.inputs.copy_(digits(20))  # pseudo-inputs like the data, as training makes them
    mean, std = model.prior_moments()
    assert mean.abs().max() > 3 and std.min() > 3  # far from N(0, I)
    codec = Codec(model, "vamp", "00" * 32)
    images = digits(8)
    records = [codec.read(b, "x.zae") for b in codec.compress(images, step=0.25)]
    z = torch.stack([codec.frame[0] + codec.frame[1] * dequantize(r.kept, r.symbols, r.step, 4) for r in records])
    assert all(len(r.kept) == 4 for r in records)
    assert (z - model.encode(images)).abs().max() <= 0.125 * codec.frame[1].max() + 1e-4  # half a step, no clipping
    assert torch.equal(codec.decode(records), model.decode(z))
    assert Codec(zoo.create("dense-vae", latent_dim=4), "standard", "00" * 32).frame is None  # N(0, I): as before


def test_a_model_without_encode_and_decode_is_refused():
    with pytest.raises(UnsupportedTaskError, match="encode and decode"):
        Codec(zoo.create("colorization-ae"), "colorizer", "00" * 32)


def test_latent_steps_and_bits():
    assert [step_of(c) for c in (0, 40, 48, 56, 72)] == [1 / 64, 0.5, 1.0, 2.0, 8.0]
    assert step_code(0.25) == 32 and step_code(0.26) == 32 and step_code(bits=2.047) == 48
    for bad in (0.001, 100.0):
        with pytest.raises(ValueError, match="outside the latent steps"):
            step_code(bad)
    with pytest.raises(ValueError, match="exactly one"):
        step_code(1.0, 2.0)


# ---------------------------------------------------------------------------------------------- residual


def test_lossless_reproduces_the_8_bit_image_exactly(codec, mnist):
    noise = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 1, 28, 28))).float() / 255
    extremes = torch.zeros(2, 1, 28, 28)
    extremes[1] = 1.0
    images = torch.cat([mnist, digits(4), noise, extremes])
    blobs = codec.compress(images, residual_step=1)
    decoded = codec.decode([codec.read(b, f"{i}.zae") for i, b in enumerate(blobs)])
    assert np.array_equal(eight_bit(decoded), eight_bit(images))
    mnist_bytes = np.mean([len(b) for b in blobs[:8]])
    assert mnist_bytes < 220, mnist_bytes  # PNG needs about 270 bytes for these


@pytest.mark.parametrize("step", [2, 3, 4, 16, 64, 255])
def test_residual_error_is_at_most_half_the_step(codec, mnist, step):
    images = torch.cat([mnist[:4], digits(2, seed=5)])
    decoded = codec.decode([codec.read(b, "x.zae") for b in codec.compress(images, residual_step=step)])
    error = np.abs(eight_bit(decoded).astype(int) - eight_bit(images).astype(int))
    assert error.max() <= step / 2
    if step <= 16:
        assert error.max() > step / 2 - 1  # the bound is what is used, not a much finer grid


def test_residual_layer_needs_a_valid_step(codec):
    for bad in (0, 256, 1.5):
        with pytest.raises(ValueError, match="residual step"):
            codec.compress(digits(1), residual_step=bad)


def test_rate_control_is_monotonic(codec, mnist):
    images = torch.cat([mnist, digits(8, seed=2)])

    def size(**options) -> int:
        return sum(map(len, codec.compress(images, **options)))

    by_step = [size(step=s) for s in (8.0, 2.0, 0.5, 0.125, 1 / 64)]
    by_bits = [size(bits=b) for b in (0, 2, 4, 6, 8)]
    by_residual = [size(residual_step=d) for d in (255, 64, 16, 4, 1)]
    for sizes in (by_step, by_bits, by_residual):
        assert sizes == sorted(sizes) and sizes[0] < sizes[-1], sizes
    assert by_residual[0] > size()  # a residual layer costs bytes
    assert size(step=0.5, inactive_std=2.0) > size(step=0.5)  # keeping inactive units costs bytes


def test_a_different_prediction_when_decoding_is_refused(codec, mnist, residual_blob, monkeypatch):
    """A machine whose decoder rounds one pixel differently must not return a wrong image."""
    original = Codec.prediction

    def off_by_one(self, z):
        return np.clip(original(self, z).astype(int) + 1, 0, 255).astype(np.uint8)

    record = codec.read(residual_blob, "x.zae")
    monkeypatch.setattr(Codec, "prediction", off_by_one)
    with pytest.raises(DecoderMismatchError, match=r"x\.zae: the residual layer does not decode .*prediction"):
        codec.decode([record])


def test_the_prediction_does_not_depend_on_the_thread_count(codec, mnist):
    z = codec.model.encode(mnist[:1])[0]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        many = codec.prediction(z)
        assert torch.get_num_threads() == 2  # put back as it was
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(many, codec.prediction(z))


# ---------------------------------------------------------------------------------------------- bad files


def test_wrong_model_is_refused(blob, residual_blob, tmp_path):
    other = tmp_path / "same-architecture-other-weights"
    zoo.create("conv-vae", preset="mnist").save_pretrained(other)
    for data in (blob, residual_blob):
        for name in (str(other), "dense-vae-mnist"):
            with pytest.raises(ModelMismatchError, match=r"x\.zae: written by model 'conv-vae-mnist'.*wrong weights"):
                Codec.load(name).read(data, "x.zae")


@pytest.mark.parametrize("which", ["blob", "residual_blob"])
def test_every_truncation_is_reported(codec, which, request):
    data = request.getfixturevalue(which)
    for size in range(len(data)):
        with pytest.raises(TruncatedFileError, match=r"x\.zae: file is truncated"):
            decompress(codec, data[:size])
    with pytest.raises(TruncatedFileError, match=rf"has {len(data) - 1} of the {len(data)} bytes"):
        decompress(codec, data[:-1])


@pytest.mark.parametrize("which", ["blob", "residual_blob"])
def test_every_flipped_bit_is_reported(codec, which, request):
    data = request.getfixturevalue(which)
    for pos in range(len(data)):
        for mask in (0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0xFF):
            damaged = bytearray(data)
            damaged[pos] ^= mask
            with pytest.raises(CompressedFileError, match=r"x\.zae: "):
                decompress(codec, bytes(damaged))


def test_corrupt_extended_and_foreign_files(codec, blob):
    damaged = bytearray(blob)
    damaged[-6] ^= 0x10
    with pytest.raises(CorruptFileError, match=r"x\.zae: file is corrupt: crc32 mismatch"):
        codec.read(bytes(damaged), "x.zae")
    with pytest.raises(CorruptFileError, match="1 unexpected bytes after its declared end"):
        codec.read(blob + b"\0", "x.zae")
    with pytest.raises(NotCompressedFileError, match=r"y\.png: not a \.zae file"):
        codec.read(b"\x89PNG\r\n\x1a\n" + blob[8:], "y.png")


def test_a_well_formed_file_with_impossible_fields_is_corrupt(codec, blob):
    """Fields are checked after the crc32 too: a file written wrongly (or forged) is refused, not decoded."""
    header, payload, _ = unpack(blob, "x.zae")
    body = bytearray(blob[:-4])
    body[3] |= 0x40  # an unknown flag
    with pytest.raises(CorruptFileError, match="unknown flags"):
        codec.read(bytes(body) + struct.pack("<I", zlib.crc32(bytes(body))), "x.zae")
    with pytest.raises(CorruptFileError, match=rf"file is corrupt: the payload is {len(payload) + 1} bytes, not a whole number"):
        decompress(codec, pack(header, payload + b"\0"))
    good = pack(dataclasses.replace(header, shape=(1, 28, 28)), payload)[:-4]
    five_channels = good.replace(b"\x01\x1c\x1c" + payload, b"\x05\x1c\x1c" + payload)  # C = 5: no such image
    assert five_channels != good
    with pytest.raises(CorruptFileError, match=r"image shape \(5, 28, 28\)"):
        codec.read(five_channels + struct.pack("<I", zlib.crc32(five_channels)), "x.zae")
    with pytest.raises(ValueError, match="outside what a .zae file holds"):
        pack(dataclasses.replace(header, shape=(1, 1 << 14, 1 << 14)), payload)


def test_other_format_versions_are_refused_by_number(codec):
    version_1 = b"\x89ZAE\x01\x0econv-vae-mnist" + bytes(32) + b"\x01\x1c\x00\x1c\x00"
    with pytest.raises(UnsupportedVersionError, match=r"x\.zae: \.zae format version 1, written by an earlier"):
        codec.read(version_1, "x.zae")
    with pytest.raises(UnsupportedVersionError, match=r"format version 3; this ae-zoo reads version 2"):
        codec.read(MAGIC + b"\x03\x00\x10" + bytes(13), "x.zae")


# ---------------------------------------------------------------------------------------------- entropy coding


def test_range_coding_round_trips_and_is_deterministic():
    rng = random.Random(0)
    decisions = []
    for _ in range(3000):
        kind = rng.choice(["bit", "bit", "uniform", "latent"])
        if kind == "bit":
            decisions.append(("bit", rng.randrange(4), rng.random() < 0.2))
        elif kind == "uniform":
            size = rng.randint(2, 300)
            decisions.append(("uniform", size, rng.randrange(size)))
        else:
            step = step_of(rng.randrange(73))
            decisions.append(("latent", step, round(rng.gauss(0, 1) / step)))

    def run(coder, values: bool):
        contexts = [Adaptive() for _ in range(4)]
        out = []
        for kind, arg, value in decisions:
            value = value if values else None
            if kind == "bit":
                out.append(coder.bit(contexts[arg], value))
            elif kind == "uniform":
                out.append(coder.uniform(arg, value))
            else:
                out.append(coder.latent(arg, value))
        return out

    writer = Writer()
    coded = run(writer, True)
    payload = writer.finish()
    assert run(Reader(payload), False) == coded
    again = Writer()
    run(again, True)
    assert again.finish() == payload
    assert coded == [min(max(v, -math.ceil(8 / a)), math.ceil(8 / a)) if k == "latent" else v for k, a, v in decisions]


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_round_trip_on_folders_and_globs(codec, tmp_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    arrays = eight_bit(digits(3, seed=3)[:, 0])
    Image.fromarray(arrays[0]).save(src / "a.png")
    Image.fromarray(arrays[1]).save(src / "sub" / "b.png")
    Image.fromarray(arrays[2]).resize((56, 42)).convert("RGB").save(tmp_path / "c.jpg", quality=95)
    runner = CliRunner()
    result = runner.invoke(main, ["compress", NAME, str(src), str(tmp_path / "*.jpg"), "--out", str(tmp_path / "z"),
                                  "--bits", "4"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "z").iterdir()) == ["a.zae", "b.zae", "c.zae"]
    result = runner.invoke(main, ["decompress", str(tmp_path / "z" / "*.zae"), "--out", str(tmp_path / "png")])
    assert result.exit_code == 0, result.output
    restored = {p.stem: np.asarray(Image.open(p)) for p in (tmp_path / "png").iterdir()}
    assert restored["c"].shape == (42, 56, 3) and restored["a"].shape == (28, 28)
    record = codec.read((tmp_path / "z" / "a.zae").read_bytes(), "a.zae")
    assert np.array_equal(restored["a"], eight_bit(codec.decode([record])[0, 0]))


def test_cli_lossless_and_residual_round_trip(mnist, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i, array in enumerate(eight_bit(mnist[:3, 0])):
        Image.fromarray(array).save(src / f"{i}.png")
    runner = CliRunner()
    for options, bound in ((["--lossless"], 0), (["--residual-step", "9", "--step", "1"], 4)):
        out = tmp_path / f"z{bound}"
        result = runner.invoke(main, ["compress", NAME, str(src), "--out", str(out), *options])
        assert result.exit_code == 0, result.output
        result = runner.invoke(main, ["decompress", str(out), "--out", str(out / "png")])
        assert result.exit_code == 0, result.output
        for i, array in enumerate(eight_bit(mnist[:3, 0])):
            restored = np.asarray(Image.open(out / "png" / f"{i}.png")).astype(int)
            assert np.abs(restored - array).max() <= bound
    result = runner.invoke(main, ["compress", NAME, str(src), "--out", str(tmp_path / "x"), "--lossless",
                                  "--residual-step", "4"])
    assert result.exit_code == 2 and "--lossless is --residual-step 1" in result.output
    result = runner.invoke(main, ["compress", NAME, str(src), "--out", str(tmp_path / "x"), "--step", "20"])
    assert result.exit_code == 2 and "outside the latent steps" in result.output


def test_cli_reports_bad_files_in_one_line(blob, tmp_path):
    (tmp_path / "cut.zae").write_bytes(blob[:-3])
    result = CliRunner().invoke(main, ["decompress", str(tmp_path / "cut.zae"), "--out", str(tmp_path / "png")])
    assert result.exit_code == 1 and "cut.zae: file is truncated" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(main, ["compress", NAME, str(tmp_path / "none*.png"), "--out", str(tmp_path / "z")])
    assert result.exit_code == 1 and "none*.png" in result.output


def test_a_file_naming_an_unregistered_model_is_not_followed(codec, blob, tmp_path):
    """An untrusted .zae must not make decompress load a path or fetch hf://... on its own."""
    header, payload, _ = unpack(blob, "x.zae")
    (tmp_path / "evil.zae").write_bytes(pack(dataclasses.replace(header, model_name="hf://attacker/model"), payload))
    result = CliRunner().invoke(main, ["decompress", str(tmp_path / "evil.zae"), "--out", str(tmp_path / "png")])
    assert result.exit_code == 1 and "not a registered pretrained model" in result.output, result.output
    assert not (tmp_path / "png").exists() or not list((tmp_path / "png").iterdir())
    assert fingerprint(codec.sha256) == header.fingerprint
