"""Training throughput: the zoo trainer against seed 001's loop (the PyTorch MNIST VAE example), in one run.

The reference is seed 001's training loop, kept as that example writes it: ``torchvision.datasets.MNIST``
with ``ToTensor``, a ``DataLoader`` at batch 128 with ``shuffle=True``, the 784-400-20 ReLU VAE
(``fc1``, ``fc21``/``fc22``, ``fc3``, ``fc4``, sigmoid output), ``Adam(lr=1e-3)``,
``F.binary_cross_entropy(..., reduction="sum")`` plus the analytic KLD, eager mode, ``loss.item()``
every step and a log line every 10 batches (written to a null sink here, not the terminal).

Against it, in the same process and interleaved (seed, zoo, seed, zoo, ...), the zoo trainer
(:class:`zoo.training.Trainer`) trains ``dense-vae --preset 784-400-20`` on the same images at batch 128,
Adam 1e-3 (the zoo binarizes every batch, which the example does not: the zoo does more work per step).
With ``--conv`` it also times ``conv-vae --preset mnist`` through the zoo trainer, default
(fp32, channels_last) against ``--memory-format contiguous`` and ``--precision bf16``.

Each measurement trains one epoch over the first ``--images`` MNIST training images and counts the
whole epoch (loading, binarization, forward, backward, optimizer, bookkeeping); the zoo's epoch time
excludes validation and checkpoint writing. A warm-up round (not counted) takes the one-time costs
(imports, allocator and oneDNN caches). The machine may be shared: every variant is then run
``--repeats`` times, alternating, and the median of each is reported, with the ratio of medians and
the range of the per-round ratios (each round's variants ran back to back, so they saw similar load).
Both clocks are reported: wall time, and CPU time of the process, which with ``--threads 1`` is
what an idle core would take and stays put when other processes compete for the cores.

Usage (MNIST must be fetched: ``zoo data fetch mnist``)::

    python benchmarks/train_throughput.py                      # dense: seed loop vs zoo trainer
    python benchmarks/train_throughput.py --conv --threads 1   # plus conv-vae variants, 1 thread
    python benchmarks/train_throughput.py --variants default,bf16,compile
    python benchmarks/train_throughput.py --variants default,iwae5,vamp   # what the richer objectives cost
"""

import argparse
import io
import math
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from zoo import resources

# As `zoo train` does: idle OpenMP threads sleep instead of spinning (OMP_WAIT_POLICY=PASSIVE, before torch
# loads), unless the environment chose a policy; OMP_WAIT_POLICY=ACTIVE measures torch's spinning default.
resources.passive_openmp_wait()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

# -- seed 001: the PyTorch MNIST VAE example's model, loss and training loop ---------------------------------


class SeedVAE(nn.Module):
    """The example's model: 784 -> 400 -> (20, 20) -> 400 -> 784, ReLU, sigmoid output."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        return mu + eps * std

    def decode(self, z):
        h3 = F.relu(self.fc3(z))
        return torch.sigmoid(self.fc4(h3))

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, 784))
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


def seed_loss_function(recon_x, x, mu, logvar):
    """Reconstruction BCE summed over the batch plus KL(q(z|x) || N(0, I)), as in the example."""
    bce = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld


def mnist_root(root: Path) -> Path:
    """A torchvision MNIST root (``ROOT/MNIST/raw``) whose files link to the zoo's verified IDX files."""
    import zoo.data

    zoo.data.checksum("mnist")  # verified, or a clear error saying how to fetch it
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for path in zoo.data.dataset_dir("mnist").iterdir():
        if "idx" in path.name and not (raw / path.name).exists():
            os.symlink(path, raw / path.name)
    return root


def seed_loop(images: int, root: Path, log_interval: int = 10) -> tuple[float, float]:
    """One epoch of the example's ``train()`` over the first ``images`` training images.

    Returns (samples per second of wall time, samples per CPU-second of the process).
    """
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    torch.manual_seed(1)  # the example's default --seed
    device = torch.device("cpu")
    dataset = datasets.MNIST(str(root), train=True, download=False, transform=transforms.ToTensor())
    train_loader = DataLoader(Subset(dataset, range(images)), batch_size=128, shuffle=True)
    model = SeedVAE().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    sink = io.StringIO()  # the example prints here; a terminal would only add noise to the timing

    start, cpu_start = time.perf_counter(), time.process_time()
    model.train()
    train_loss = 0
    for batch_idx, (data, _) in enumerate(train_loader):
        data = data.to(device)
        optimizer.zero_grad()
        recon_batch, mu, logvar = model(data)
        loss = seed_loss_function(recon_batch, data, mu, logvar)
        loss.backward()
        train_loss += loss.item()
        optimizer.step()
        if batch_idx % log_interval == 0:
            print(f"Train Epoch: 1 [{batch_idx * len(data)}/{len(train_loader.dataset)} "
                  f"({100.0 * batch_idx / len(train_loader):.0f}%)]\tLoss: {loss.item() / len(data):.6f}", file=sink)
    print(f"====> Epoch: 1 Average loss: {train_loss / len(train_loader.dataset):.4f}", file=sink)
    return images / (time.perf_counter() - start), images / (time.process_time() - cpu_start)


# -- the zoo trainer --------------------------------------------------------------------------------------------


def zoo_loop(images: int, architecture: str, preset: str, trainer_class=None, epochs: int = 1,
             model_options: dict | None = None, **options) -> tuple[float, float]:
    """The zoo trainer's last epoch over the first ``images`` MNIST training images: samples per second of
    wall time and per CPU-second of the process (as :func:`seed_loop`).

    ``options`` are TrainConfig fields (``precision``, ``compile``, ``memory_format``, ...);
    ``model_options`` override the preset's model config (e.g. ``iwae_samples``, ``prior``).
    ``trainer_class`` swaps in another Trainer (e.g. an older copy, for before/after comparisons).
    """
    import zoo
    import zoo.data
    from zoo.training import TrainConfig, Trainer

    data = zoo.data.load("mnist", "train")
    torch.manual_seed(0)
    model = zoo.create(architecture, preset, **(model_options or {}))
    config = TrainConfig(epochs=epochs, batch_size=128, lr=1e-3, train_limit=images, **options)
    with tempfile.TemporaryDirectory() as out:
        trainer = (trainer_class or Trainer)(model, data, None, config, out, data_name="mnist", progress=False,
                                             log=lambda _m: None)
        result = trainer.fit()
    last = result.history[-1]  # the epoch's own time: no validation, checkpoint or recipe writing
    return images / last["seconds"], images / last.get("cpu_seconds", math.nan)


VARIANTS = {  # name -> (architecture, preset, TrainConfig options, epochs timed: the last one counts, model options)
    "default": ("dense-vae", "784-400-20", {}, 1, {}),
    "bf16": ("dense-vae", "784-400-20", {"precision": "bf16"}, 1, {}),
    "compile": ("dense-vae", "784-400-20", {"compile": True}, 2, {}),
    "iwae5": ("dense-vae", "784-400-20", {}, 1, {"iwae_samples": 5}),  # the IWAE objective, k = 5
    "vamp": ("dense-vae", "784-400-20", {}, 1, {"prior": "vamp", "pseudo_inputs": 500}),
    "conv": ("conv-vae", "mnist", {}, 1, {}),
    "conv-contiguous": ("conv-vae", "mnist", {"memory_format": "contiguous"}, 1, {}),
    "conv-bf16": ("conv-vae", "mnist", {"precision": "bf16"}, 1, {}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20000, help="dense: training images per measurement")
    parser.add_argument("--conv-images", type=int, default=3000, help="conv-vae: training images per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds after a warm-up round; "
                                                               "medians are reported")
    parser.add_argument("--threads", type=int, default=None, help="torch threads [default: torch's own]")
    parser.add_argument("--variants", default="default", help=f"zoo variants, comma-separated: {', '.join(VARIANTS)}")
    parser.add_argument("--conv", action="store_true", help="also run conv, conv-contiguous and conv-bf16")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = [v for v in args.variants.split(",") if v]
    if args.conv:
        variants += [v for v in ("conv", "conv-contiguous", "conv-bf16") if v not in variants]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    print(f"torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} thread(s), CPU, batch 128; "
          f"dense: {args.images} images, conv: {args.conv_images} images per measurement; "
          f"a warm-up round, then {args.repeats} interleaved rounds; OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}; load average before: {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs")
    runs: dict[str, list[tuple[float, float]]] = {"seed": [], **{v: [] for v in variants}}

    def measure(name: str, root: Path) -> tuple[float, float]:
        if name == "seed":
            return seed_loop(args.images, root)
        architecture, preset, options, epochs, model_options = VARIANTS[name]
        images = args.conv_images if architecture == "conv-vae" else args.images
        return zoo_loop(images, architecture, preset, epochs=epochs, model_options=model_options, **options)

    with tempfile.TemporaryDirectory() as tmp:
        root = mnist_root(Path(tmp))
        for name in runs:  # warm-up: one-time imports (the fused optimizer pulls in torch._dynamo), caches
            measure(name, root)
        for round_index in range(args.repeats):
            for name in runs:
                runs[name].append(measure(name, root))
            print(f"  round {round_index + 1}: " + "  ".join(f"{k} {v[-1][0]:.0f}" for k, v in runs.items()),
                  flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    print("\nwall: samples per second; cpu: samples per CPU-second of the process (all its threads; with one thread")
    print("it is the speed on an idle core, and other processes on a shared machine hardly move it)")
    print(f"{'variant':<20}{'wall':>9}{'vs seed':>9}{'per round':>13}{'cpu':>9}{'vs seed':>9}")
    for name in runs:
        wall = statistics.median(w for w, _ in runs[name])
        cpu = statistics.median(c for _, c in runs[name])
        seed_wall = statistics.median(w for w, _ in runs["seed"])
        seed_cpu = statistics.median(c for _, c in runs["seed"])
        rounds = [z[0] / s[0] for z, s in zip(runs[name], runs["seed"])]
        label = "seed 001 loop" if name == "seed" else f"zoo {name}"
        print(f"{label:<20}{wall:>9.0f}{wall / seed_wall:>8.2f}x{min(rounds):>6.2f}-{max(rounds):<6.2f}"
              f"{cpu:>9.0f}{cpu / seed_cpu:>8.2f}x")


if __name__ == "__main__":
    main()
