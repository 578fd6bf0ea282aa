"""``make demo`` / ``python -m zoo.demo``: load a pretrained model and write its figures as PNGs.

For ``conv-vae-mnist`` (the default) that is a grid of samples, reconstructions of real MNIST test
digits (originals above, reconstructions below) and an interpolation strip between two encoded
test digits; then it prints the paths and the model's evaluated headline metric. Which figures a
model gets follows from its declared tasks, so any zoo model works with ``--model``.
"""

import argparse
import sys
from pathlib import Path

import torch


def save_grid(images: torch.Tensor, path: Path, nrow: int, scale: int = 3) -> Path:
    """Save (N, C, H, W) images in [0, 1] as one PNG grid, upscaled ``scale`` times (nearest)."""
    from zoo.images import write_grid

    return write_grid(images, path, nrow=nrow, scale=scale)


@torch.no_grad()
def figures(model, test_images: torch.Tensor | None, out: Path, seed: int = 0, n: int = 64) -> dict[str, Path]:
    """Write every figure the model's tasks allow into ``out``; returns {figure name: path}.

    ``test_images``: uint8 (N, C, H, W) real images, or None to skip the figures that need them.
    """
    from zoo.components.color import rgb_to_gray
    from zoo.latents import interpolation, manifold_codes

    model = model.eval()
    dev = model.device
    gen = torch.Generator(device=dev).manual_seed(seed)
    paths: dict[str, Path] = {}
    x = None
    if test_images is not None:
        x = test_images[:16].float().div(255).to(dev)
    if "sample" in model.tasks:
        paths["samples"] = save_grid(model.sample(n, generator=gen), out / "samples.png", nrow=8)
    if x is not None and "denoise" in model.tasks and hasattr(model, "corrupt"):
        noisy = model.corrupt(x.cpu(), generator=torch.Generator().manual_seed(seed)).to(dev)
        rows = torch.cat([x[:8], noisy[:8], model.denoise(noisy)[:8]])
        paths["denoising"] = save_grid(rows, out / "denoising.png", nrow=8)  # clean / noisy / denoised
    elif x is not None and "colorize" in model.tasks:
        gray = rgb_to_gray(x)
        rows = torch.cat([gray.expand(-1, 3, -1, -1)[:8], model.colorize(gray)[:8], x[:8]])
        paths["colorization"] = save_grid(rows, out / "colorization.png", nrow=8)  # grey / colorized / true
    elif x is not None and "reconstruct" in model.tasks and tuple(x.shape[1:]) == tuple(model.input_shape):
        encoded = model.encode(x)
        rows = torch.cat([x, model.decode(encoded)])  # decode the posterior mean: a deterministic figure
        paths["reconstructions"] = save_grid(rows, out / "reconstructions.png", nrow=16)
    if x is not None and {"encode", "decode"} <= set(model.tasks) and tuple(x.shape[1:]) == tuple(model.input_shape):
        z = model.encode(x[:2])
        path = interpolation(z[0], z[1], 10)
        paths["interpolation"] = save_grid(model.decode(path), out / "interpolation.png", nrow=10)
    if model.latent_dim == 2 and "decode" in model.tasks:
        zs = manifold_codes(16)
        paths["manifold"] = save_grid(model.decode(zs.to(dev)), out / "manifold.png", nrow=16, scale=2)
    return paths


def main(argv: list[str] | None = None) -> int:
    import zoo
    import zoo.data

    parser = argparse.ArgumentParser(prog="python -m zoo.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="conv-vae-mnist", help="pretrained name or checkpoint folder")
    parser.add_argument("--out", default="demo-output", help="folder for the PNGs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    model = zoo.load(args.model)
    info = zoo.info(args.model) if args.model in zoo.list_models() else {"metadata": {}}
    dataset = info["metadata"].get("dataset")
    images = None
    if dataset:
        try:
            images = zoo.data.load(dataset, "test", download=True).images
        except zoo.data.DataError as exc:
            print(f"note: no real {dataset} test images ({exc}); skipping the figures that need them", file=sys.stderr)
    paths = figures(model, images, Path(args.out), seed=args.seed)
    print(f"{args.model}: wrote {len(paths)} figure(s)")
    for name, path in paths.items():
        print(f"  {name:16s} {path}")
    headline = info["metadata"].get("headline")
    if headline:
        print(f"eval: {headline['name']} = {headline['value']:.2f} {headline.get('unit', '')}".rstrip()
              + f"  ({info['metadata'].get('dataset')}/{info['metadata'].get('split', 'test')}, "
              f"seed {info['metadata'].get('seed')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
