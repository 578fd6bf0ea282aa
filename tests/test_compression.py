"""zoo.compression and `zoo compress` / `zoo decompress`: round trips, the format, and refusing bad files."""

import random

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import zoo
from zoo.cli.app import main
from zoo.compression import (
    Codec,
    CompressedFileError,
    CorruptFileError,
    ModelMismatchError,
    NotCompressedFileError,
    TruncatedFileError,
    unpack,
    weights_sha256,
)
from zoo.compression.entropy import decode_symbols, encode_symbols
from zoo.compression.format import MAGIC, VERSION
from zoo.compression.quantize import dequantize
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


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec.load(NAME)


@pytest.fixture(scope="module")
def blob(codec) -> bytes:
    return codec.compress(digits(1), step=1.0)[0]


def test_round_trip_reproduces_model_decode_of_dequantized_latent(codec):
    images = digits(8)
    records = [codec.read(b, "x.zae") for b in codec.compress(images, step=0.5)]
    expected = codec.model.decode(torch.stack([dequantize(r.quantized, 32) for r in records]))
    assert torch.equal(codec.decode(records), expected)
    assert ((codec.decode(records) - codec.model.reconstruct(images)).abs().mean()) < 0.02


def test_header_fields(codec, blob):
    record = unpack(blob, "x.zae")
    assert blob[:4] == MAGIC and blob[4] == VERSION
    assert record.model_name == NAME and record.weights_sha256 == weights_sha256(NAME)
    assert record.shape == (1, 28, 28) and record.latent_dim == codec.model.latent_dim == 32
    sigma = torch.exp(0.5 * codec.model.posterior(digits(1))[1])[0]
    assert record.quantized.kept == tuple(torch.nonzero(sigma < 0.9).flatten().tolist())
    assert 0 < len(record.quantized.kept) < 32  # inactive units are dropped
    assert len(record.quantized.sigma_codes) == len(record.quantized.kept) and record.quantized.step == 1.0


def test_a_model_without_posterior_keeps_every_dimension():
    model = zoo.create("denoising-ae")
    plain = Codec(model, "denoiser", "00" * 32)
    record = plain.read(plain.compress(digits(1), step=0.1)[0], "x.zae")
    assert record.quantized.sigma_codes is None and len(record.quantized.kept) == model.latent_dim
    assert torch.equal(plain.decode([record]), model.decode(dequantize(record.quantized, model.latent_dim)[None]))


def test_a_model_without_encode_and_decode_is_refused():
    with pytest.raises(UnsupportedTaskError, match="encode and decode"):
        Codec(zoo.create("colorization-ae"), "colorizer", "00" * 32)


def test_wrong_model_is_refused(blob, tmp_path):
    other = tmp_path / "same-architecture-other-weights"
    zoo.create("conv-vae", preset="mnist").save_pretrained(other)
    for name in (str(other), "dense-vae-mnist"):
        with pytest.raises(ModelMismatchError, match=r"x\.zae: written by model 'conv-vae-mnist'.*wrong weights"):
            Codec.load(name).read(blob, "x.zae")


def test_every_truncation_is_reported(codec, blob):
    for size in range(len(blob)):
        with pytest.raises(TruncatedFileError if size >= 4 else CompressedFileError, match=r"x\.zae"):
            codec.read(blob[:size], "x.zae")
    with pytest.raises(TruncatedFileError, match=r"x\.zae: file is truncated: it ends inside the crc32"):
        codec.read(blob[:-1], "x.zae")


def test_corrupt_byte_and_wrong_files(codec, blob):
    damaged = bytearray(blob)
    damaged[-6] ^= 0x10
    with pytest.raises(CorruptFileError, match=r"x\.zae: file is corrupt: crc32 mismatch"):
        codec.read(bytes(damaged), "x.zae")
    with pytest.raises(CorruptFileError, match="unexpected bytes"):
        codec.read(blob + b"\0", "x.zae")
    with pytest.raises(NotCompressedFileError, match=r"y\.png: not a \.zae file"):
        codec.read(b"\x89PNG\r\n\x1a\n" + blob[8:], "y.png")


def test_a_flipped_byte_never_decodes_silently(codec):
    for blob in codec.compress(digits(3, seed=1), step=0.25):
        for pos in range(len(blob)):
            for mask in (0x01, 0x80, 0xFF):
                damaged = bytearray(blob)
                damaged[pos] ^= mask
                with pytest.raises(CompressedFileError):
                    codec.read(bytes(damaged), "x.zae")


def test_rate_control_changes_size_monotonically(codec):
    images = digits(32, seed=2)
    by_step = [sum(map(len, codec.compress(images, step=s))) for s in (8.0, 2.0, 0.5, 0.125, 0.03)]
    by_bits = [sum(map(len, codec.compress(images, bits=b))) for b in (1, 3, 5, 7, 9)]
    for sizes in (by_step, by_bits):
        assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    dropped_none = sum(map(len, codec.compress(images, step=0.5, inactive_std=2.0)))
    assert dropped_none > by_step[2]  # keeping inactive units costs bytes


def test_entropy_code_round_trips():
    rng = random.Random(0)
    for symbols in ([], [0], [rng.randint(-3, 3) for _ in range(20)], [rng.randint(-5000, 5000) for _ in range(50)],
                    [0] * 3000):
        payload, order, deflated = encode_symbols(symbols)
        assert decode_symbols(payload, len(symbols), order, deflated) == symbols
    assert encode_symbols([0] * 3000)[2]  # long runs go through DEFLATE


def test_cli_round_trip_on_folders_and_globs(codec, tmp_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    arrays = (digits(3, seed=3)[:, 0] * 255).round().to(torch.uint8).numpy()
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
    expected = (codec.decode([record])[0, 0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    assert np.array_equal(restored["a"], expected)


def test_cli_reports_bad_files_in_one_line(blob, tmp_path):
    (tmp_path / "cut.zae").write_bytes(blob[:-3])
    result = CliRunner().invoke(main, ["decompress", str(tmp_path / "cut.zae"), "--out", str(tmp_path / "png")])
    assert result.exit_code == 1 and "cut.zae: file is truncated" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(main, ["compress", NAME, str(tmp_path / "none*.png"), "--out", str(tmp_path / "z")])
    assert result.exit_code == 1 and "none*.png" in result.output


def test_a_file_naming_an_unregistered_model_is_not_followed(codec, tmp_path):
    """An untrusted .zae must not make decompress load a path or fetch hf://... on its own."""
    from zoo.compression.format import pack, unpack

    import dataclasses

    (blob,) = codec.compress(digits(1), step=1.0)
    record = dataclasses.replace(unpack(blob, "x.zae"), model_name="hf://attacker/model")
    (tmp_path / "evil.zae").write_bytes(pack(record))
    result = CliRunner().invoke(main, ["decompress", str(tmp_path / "evil.zae"), "--out", str(tmp_path / "png")])
    assert result.exit_code == 1 and "not a registered pretrained model" in result.output, result.output
    assert not (tmp_path / "png").exists() or not list((tmp_path / "png").iterdir())
