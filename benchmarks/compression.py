"""Rate-distortion of `zoo compress` on MNIST against PNG, JPEG and WebP (Pillow, greyscale).

    .venv/bin/python benchmarks/compression.py            # 2000 test images
    .venv/bin/python benchmarks/compression.py --all      # all 10000

Prints mean bytes per image (whole files, headers included) and mean PSNR / SSIM of the
8-bit decoded images for each rate setting and quality, draws the curves to
benchmarks/compression.png (Pillow; matplotlib is not a dependency) and checks two targets:
(1) at equal mean bytes, PSNR above the best of JPEG and WebP wherever their curves reach;
(2) at least 4x smaller than PNG (optimize=True) at PSNR >= 20 dB.
"""

import argparse
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

import zoo.data
from zoo.compression import Codec
from zoo.compression.entropy import encode_symbols
from zoo.compression.images import to_uint8

MODELS = ("conv-vae-mnist", "dense-vae-mnist")
BITS = (0.5, 1, 1.5, 2, 2.5, 3, 4, 5, 6, 8)
QUALITIES = {"JPEG": (1, 5, 10, 20, 30, 50, 70, 90), "WEBP": (0, 5, 10, 20, 30, 50, 70, 90)}
FIGURE = Path(__file__).with_suffix(".png")


def metrics(originals: np.ndarray, decoded: list[np.ndarray]) -> tuple[float, float]:
    """Mean PSNR (inf for identical images is left out; all identical -> inf) and mean SSIM, on uint8."""
    psnr = [peak_signal_noise_ratio(a, b, data_range=255) for a, b in zip(originals, decoded) if not np.array_equal(a, b)]
    ssim = [structural_similarity(a, b, data_range=255) for a, b in zip(originals, decoded)]
    return (float(np.mean(psnr)) if psnr else float("inf")), float(np.mean(ssim))


def pillow_point(originals: np.ndarray, fmt: str, **options) -> tuple[float, float, float]:
    sizes, decoded = [], []
    for array in originals:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format=fmt, **options)
        sizes.append(buffer.tell())
        decoded.append(np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("L")))
    return (float(np.mean(sizes)), *metrics(originals, decoded))


def zoo_points(name: str, images: torch.Tensor, originals: np.ndarray) -> list[dict]:
    """One point per ``--bits`` setting: file bytes, payload (entropy-coded latent) bytes, PSNR, SSIM."""
    codec = Codec.load(name)
    points = []
    for bits in BITS:
        blobs = codec.compress(images, bits=bits)
        records = [codec.read(b, f"{name}-{i}.zae") for i, b in enumerate(blobs)]
        decoded = [to_uint8(image, (1, 28, 28)) for image in codec.decode(records)]
        payload = np.mean([len(encode_symbols(list(r.quantized.symbols))[0]) for r in records])
        kept = np.mean([len(r.quantized.kept) for r in records])
        points.append(dict(codec=name, setting=f"bits={bits}, {kept:.1f} dims kept", bytes=float(np.mean(list(map(len, blobs)))),
                           payload=float(payload), **dict(zip(("psnr", "ssim"), metrics(originals, decoded)))))
    return points


def baseline_points(originals: np.ndarray) -> list[dict]:
    points = []
    for fmt, qualities in QUALITIES.items():
        for quality in qualities:
            size, psnr, ssim = pillow_point(originals, fmt, quality=quality)
            points.append(dict(codec=fmt, setting=f"quality={quality}", bytes=size, payload=None, psnr=psnr, ssim=ssim))
    size, psnr, ssim = pillow_point(originals, "PNG", optimize=True)
    points.append(dict(codec="PNG", setting="optimize=True", bytes=size, payload=None, psnr=psnr, ssim=ssim))
    return points


def curve(points: list[dict], codec: str) -> tuple[np.ndarray, np.ndarray]:
    """(bytes, PSNR) of one codec's points, sorted by bytes, as the upper envelope (best PSNR so far)."""
    chosen = sorted((p["bytes"], p["psnr"]) for p in points if p["codec"] == codec)
    rates = np.array([r for r, _ in chosen])
    return rates, np.maximum.accumulate(np.array([q for _, q in chosen]))


def psnr_at(rates: np.ndarray, psnrs: np.ndarray, rate: float) -> float | None:
    """The best PSNR a codec reaches within ``rate`` bytes (its envelope), or None below its lowest rate."""
    return float(psnrs[rates <= rate].max()) if (rates <= rate).any() else None


def check_targets(points: list[dict]) -> list[str]:
    lines = []
    png = next(p for p in points if p["codec"] == "PNG")["bytes"]
    baselines = {fmt: curve(points, fmt) for fmt in QUALITIES}
    for name in MODELS:
        rates, psnrs = curve(points, name)
        comparisons, wins = [], 0
        for rate in sorted({*rates, *np.concatenate([r for r, _ in baselines.values()])}):
            ours = psnr_at(rates, psnrs, rate)
            theirs = [v for v in (psnr_at(r, q, rate) for r, q in baselines.values()) if v is not None]
            if ours is None or not theirs:
                continue
            comparisons.append(rate)
            wins += ours > max(theirs)
        lowest = min(r[0] for r, _ in baselines.values())
        lines.append(f"{name}: target 1 (PSNR above the best of JPEG/WebP at equal bytes): "
                     f"{'MET' if comparisons and wins == len(comparisons) else 'NOT MET'} at {wins} of "
                     f"{len(comparisons)} rates where both exist (JPEG/WebP start at {lowest:.0f} B; "
                     f"ours spans {rates[0]:.0f}-{rates[-1]:.0f} B, best {psnrs[-1]:.2f} dB)")
        good = [p for p in points if p["codec"] == name and p["psnr"] >= 20]
        if good:
            best = min(good, key=lambda p: p["bytes"])
            ratio = png / best["bytes"]
            payload_ratio = png / best["payload"]
            lines.append(f"{name}: target 2 (>= 4x smaller than PNG at >= 20 dB): {'MET' if ratio >= 4 else 'NOT MET'}: "
                         f"{best['bytes']:.1f} B per file vs PNG {png:.1f} B = {ratio:.2f}x ({best['setting']}, "
                         f"{best['psnr']:.2f} dB); the entropy-coded latent alone is {best['payload']:.1f} B = {payload_ratio:.1f}x")
        else:
            lines.append(f"{name}: target 2 NOT MET: no setting reaches 20 dB")
    return lines


def draw(points: list[dict], path: Path) -> None:
    """PSNR against mean bytes per image (log scale) for every codec, with Pillow."""
    width, height, margin = 900, 560, 70
    codecs = [*MODELS, *QUALITIES]
    colours = ["#d62728", "#9467bd", "#1f77b4", "#2ca02c"]
    finite = [p for p in points if np.isfinite(p["psnr"]) and p["codec"] in codecs]
    lo, hi = np.log10(min(p["bytes"] for p in finite) * 0.9), np.log10(max(p["bytes"] for p in finite) * 1.1)
    q_lo, q_hi = 10.0, max(45.0, max(p["psnr"] for p in finite) + 2)
    x = lambda b: margin + (np.log10(b) - lo) / (hi - lo) * (width - 2 * margin)  # noqa: E731
    y = lambda q: height - margin - (q - q_lo) / (q_hi - q_lo) * (height - 2 * margin)  # noqa: E731
    image = Image.new("RGB", (width, height), "white")
    pen = ImageDraw.Draw(image)
    pen.rectangle([margin, margin, width - margin, height - margin], outline="black")
    for b in (50, 100, 200, 300, 500, 1000):
        if lo <= np.log10(b) <= hi:
            pen.line([x(b), height - margin, x(b), height - margin + 5], fill="black")
            pen.text((x(b) - 10, height - margin + 8), str(b), fill="black")
    for q in range(int(q_lo), int(q_hi) + 1, 5):
        pen.line([margin - 5, y(q), margin, y(q)], fill="black")
        pen.text((margin - 30, y(q) - 6), str(q), fill="black")
    pen.text((width / 2 - 120, height - 30), "mean bytes per image (log scale)", fill="black")
    pen.text((10, 10), "PSNR (dB) on MNIST test images; dashed: PNG size (lossless)", fill="black")
    png = next(p for p in points if p["codec"] == "PNG")["bytes"]
    for yy in range(margin, height - margin, 8):
        pen.line([x(png), yy, x(png), yy + 4], fill="grey")
    for k, (codec, colour) in enumerate(zip(codecs, colours)):
        chosen = sorted((p["bytes"], p["psnr"]) for p in finite if p["codec"] == codec)
        pen.line([(x(b), y(q)) for b, q in chosen], fill=colour, width=2)
        for b, q in chosen:
            pen.ellipse([x(b) - 3, y(q) - 3, x(b) + 3, y(q) + 3], fill=colour)
        pen.text((width - margin - 160, margin + 10 + 16 * k), f"- {codec}", fill=colour)
    image.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--all", action="store_true", help="all 10000 test images instead of --n")
    parser.add_argument("--n", type=int, default=2000, help="number of MNIST test images")
    args = parser.parse_args()
    torch.set_num_threads(1)
    dataset = zoo.data.load("mnist", "test")
    count = len(dataset.images) if args.all else args.n
    originals = dataset.images[:count, 0].numpy()
    images = dataset.images[:count].float() / 255.0
    points = [point for name in MODELS for point in zoo_points(name, images, originals)] + baseline_points(originals)
    print(f"MNIST test, first {count} images; bytes are whole files (zoo: header + latent); payload = latent alone")
    print(f"{'codec':<16} {'setting':<30} {'bytes':>8} {'payload':>8} {'PSNR':>7} {'SSIM':>6}")
    for p in points:
        payload = f"{p['payload']:.1f}" if p["payload"] is not None else "-"
        print(f"{p['codec']:<16} {p['setting']:<30} {p['bytes']:8.1f} {payload:>8} {p['psnr']:7.2f} {p['ssim']:6.3f}")
    draw(points, FIGURE)
    print(f"rate-distortion curves: {FIGURE}")
    print("\n".join(check_targets(points)))


if __name__ == "__main__":
    main()
