"""Training throughput: the zoo trainer vs a straightforward torchvision reference loop, in one run.

Both train the same dense-vae 784-400-20 (Adam, lr 1e-3, batch 128, dynamic binarization) on
MNIST for the same number of images:

- zoo:       ``zoo.training.Trainer`` on ``zoo.data.load("mnist")`` (uint8 in memory, batched by slicing);
- reference: ``torchvision.datasets.MNIST`` + ``ToTensor`` + ``DataLoader(batch_size=128, shuffle=True)``,
             ``torch.bernoulli`` per batch, ``model.loss`` / backward / step.

Usage: ``python benchmarks/train_throughput.py [--images 30000] [--device cpu] [--repeats 2]``
(MNIST must be fetched: ``zoo data fetch mnist``). Prints samples/s of each and the ratio.
"""

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch


def zoo_trainer(images: int, device: str) -> float:
    import zoo
    import zoo.data
    from zoo.training import DistContext, TrainConfig, Trainer
    from zoo.training.distributed import resolve_device

    data = zoo.data.load("mnist", "train")
    torch.manual_seed(0)
    model = zoo.create("dense-vae", "784-400-20")
    config = TrainConfig(epochs=1, batch_size=128, lr=1e-3, train_limit=images)
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(model, data, None, config, out, data_name="mnist", progress=False, log=lambda _m: None,
                          ctx=DistContext(device=resolve_device(device)))
        result = trainer.fit()
    return images / result.history[0]["seconds"]  # the epoch's own time: no checkpoint or recipe writing


def reference_loop(images: int, device: str) -> float:
    import torchvision
    from torch.utils.data import DataLoader, Subset
    from torchvision.transforms import ToTensor

    import zoo
    import zoo.data

    source = zoo.data.dataset_dir("mnist")
    with tempfile.TemporaryDirectory() as root:
        raw = Path(root) / "MNIST" / "raw"
        raw.mkdir(parents=True)
        for f in source.iterdir():
            if "idx" in f.name:
                os.symlink(f, raw / f.name)
        dataset = torchvision.datasets.MNIST(root, train=True, download=False, transform=ToTensor())
        loader = DataLoader(Subset(dataset, range(images)), batch_size=128, shuffle=True,
                            generator=torch.Generator().manual_seed(0))
        torch.manual_seed(0)
        dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                           ("cpu" if device == "auto" else device))
        model = zoo.create("dense-vae", "784-400-20").to(dev).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        start = time.perf_counter()
        seen = 0
        for x, _ in loader:
            x = torch.bernoulli(x).to(dev)
            loss = model.loss(x)["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seen += len(x)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=30000, help="training images per measurement")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2, help="alternating measurements of each; best is kept")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} threads, device {args.device}, "
          f"dense-vae 784-400-20, batch 128, {args.images} images per measurement")
    zoo_runs, ref_runs = [], []
    for _ in range(args.repeats):
        ref_runs.append(reference_loop(args.images, args.device))
        zoo_runs.append(zoo_trainer(args.images, args.device))
        print(f"  reference {ref_runs[-1]:9.0f} samples/s   zoo {zoo_runs[-1]:9.0f} samples/s")
    best_zoo, best_ref = max(zoo_runs), max(ref_runs)
    print(f"reference loop (torchvision MNIST + ToTensor + DataLoader): {best_ref:.0f} samples/s")
    print(f"zoo trainer (in-memory uint8, slicing):                    {best_zoo:.0f} samples/s")
    print(f"ratio zoo / reference: {best_zoo / best_ref:.2f}x")


if __name__ == "__main__":
    main()
