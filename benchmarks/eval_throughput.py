"""Evaluation throughput: the likelihood set of ``zoo eval`` (IWAE bound, k importance samples), old vs new path.

The *old* path is the runner and ``importance_weighted_log_likelihood`` as they were before the
decoder passes were tiled (kept below, verbatim in substance), at the old defaults ``--batch-size
500 --chunk 100``: the noise drawn 100 samples at a time for a batch of 500 images and decoded in
one pass of up to 50,000 samples, the targets copied per sample, the posterior computed twice, no
inference mode, contiguous (NCHW) weights. The *new* path is
``zoo.evaluation.standard._likelihood`` with the automatic batch size and chunk of ``zoo eval``
(:func:`zoo.resources.eval_batch_sizes`). Both draw the same random numbers (the old path at
batch 500 / chunk 100, the draw layout the new path always uses), so their metrics must agree to
float rounding; the script prints the largest difference.

Every measurement runs in a fresh subprocess (so each has its own peak RSS), on the same first
``--images`` binarized MNIST test images, and the variants alternate (old, new, old, new, ...)
``--repeats`` times: the machine is shared, so the ratio of medians within the run is the figure to
read, not the absolute images/s. The full-test-set time is extrapolated from the median rate (at the
same k); the CPU seconds per image (user + system, all threads) give a second, load-independent
estimate: what the test set would take on ``--threads`` idle cores if the threads scaled perfectly
(with the passive wait policy, waiting threads burn no CPU time; cache and memory-bandwidth
contention from other processes still inflate it). Both paths run with ``OMP_WAIT_POLICY=PASSIVE``,
as ``zoo eval`` now sets it, unless ``--omp-default`` (OpenMP's own spinning policy) or the caller's
environment says otherwise.

``--pass-sweep 128,512,2048`` times the new path at several decoder pass sizes (batch 500 and
chunk = pass / 500, or batch = pass and chunk 1 below 500), for tuning ``CPU_PASS_BYTES``.

``--concurrent`` times two new-path processes running at once on the same CPUs, as when ``zoo eval``
runs next to ``zoo serve`` or a second eval: each with all CPUs as threads and OpenMP's default
(spinning) wait policy, with ``OMP_WAIT_POLICY=PASSIVE`` (what ``zoo eval`` sets), and with the
CPUs split (threads = CPUs / 2); and one process alone under either policy. Rates are per process,
as ratios to one process alone with the passive policy.

Usage (MNIST must be fetched: ``zoo data fetch mnist``)::

    python benchmarks/eval_throughput.py                                   # conv + dense, 100 images, k=1000
    python benchmarks/eval_throughput.py --models conv-vae-mnist --images 300 --repeats 1
    python benchmarks/eval_throughput.py --models conv-vae-mnist --concurrent --images 30
"""

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

FULL_TEST_SET = 10_000


# -- the old path (before tiling), for reference -------------------------------------------------


def old_iwae(model, x, k, generator, chunk):
    import torch

    from zoo.components.reparameterize import log_normal_diagonal

    with torch.no_grad():
        mu, logvar = model.posterior(x)
        log_weights = []
        for start in range(0, k, chunk):
            size = min(chunk, k - start)
            eps = torch.randn((size, *mu.shape), generator=generator, device=mu.device, dtype=mu.dtype)
            z = mu + torch.exp(0.5 * logvar) * eps
            logits = model.decoder_logits(z.reshape(-1, mu.shape[-1]))
            targets = x.unsqueeze(0).expand(size, *x.shape).reshape(-1, *x.shape[1:])
            log_px_z = model.log_likelihood(logits, targets).view(size, -1)
            log_weights.append(log_px_z + model.log_prior(z) - log_normal_diagonal(z, mu, logvar))
        return torch.logsumexp(torch.cat(log_weights), dim=0) - math.log(k)


def old_likelihood(model, images, *, k, seed, batch_size, device, chunk):
    import torch

    with torch.no_grad():
        gen = torch.Generator(device=device).manual_seed(seed)
        sums = {"nll_iwae": 0.0, "neg_elbo": 0.0, "reconstruction_bce": 0.0, "kl": 0.0}
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].to(device)
            log_px = old_iwae(model, x, k, gen, chunk)
            mu, logvar = model.posterior(x)
            z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=gen, device=device, dtype=mu.dtype)
            recon = -model.log_likelihood(model.decoder_logits(z), x)
            kl = model.kl_divergence(mu, logvar)
            sums["nll_iwae"] += float(-log_px.double().sum())
            sums["neg_elbo"] += float((recon + kl).double().sum())
            sums["reconstruction_bce"] += float(recon.double().sum())
            sums["kl"] += float(kl.double().sum())
        return {key: value / len(images) for key, value in sums.items()}


# -- one measurement (run in a subprocess) -------------------------------------------------------


def measure(spec: dict) -> dict:
    """Time one path on the spec's images; returns rate, metrics, peak RSS and the settings used."""
    import torch

    import zoo
    import zoo.data
    from zoo import resources
    from zoo.evaluation.standard import _likelihood

    torch.set_num_threads(spec["threads"])
    model = zoo.load(spec["model"]).eval()
    images = zoo.data.load("mnist", "test").images[:spec["images"]].float().div(255)
    images = torch.bernoulli(images, generator=torch.Generator().manual_seed(spec["seed"]))  # as evaluate() does
    if spec["path"] == "old":
        settings = {"batch_size": 500, "chunk": 100}
        run = old_likelihood
    else:
        settings = resources.eval_batch_sizes(model, "cpu", k=spec["k"], batch_size=spec.get("batch_size", "auto"),
                                              chunk=spec.get("chunk", "auto"))
        run = _likelihood
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cpu_before = time.process_time()
    started = time.perf_counter()
    metrics = run(model, images, k=spec["k"], seed=spec["seed"], batch_size=settings["batch_size"], device="cpu",
                  chunk=settings["chunk"])
    seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_before
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    return {"seconds": seconds, "images_per_s": spec["images"] / seconds, "metrics": metrics,
            "cpu_s_per_image": cpu_seconds / spec["images"],
            "peak_rss_bytes": peak, "rss_before_bytes": rss_before * 1024,
            "batch_size": settings["batch_size"], "chunk": settings["chunk"], "threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default)")}


def spawn(spec: dict, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, "--measure", json.dumps(spec)], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, **(env or {})})


def collect(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"a measurement failed (exit {proc.returncode})")
    return json.loads(out.strip().splitlines()[-1])


def run_one(spec: dict, env: dict | None = None) -> dict:
    return collect(spawn(spec, env))


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def hms(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.2f} h"


# -- the comparisons -----------------------------------------------------------------------------


def wait_policy(args) -> dict:
    """The children's OpenMP wait policy: what zoo eval sets (PASSIVE), OpenMP's default, or the caller's."""
    return {"OMP_WAIT_POLICY": "" if args.omp_default else os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}


def old_vs_new(args, model: str) -> None:
    base = {"model": model, "images": args.images, "k": args.k, "seed": args.seed, "threads": args.threads}
    results = {"old": [], "new": []}
    for rnd in range(args.repeats):
        for path in ("old", "new"):
            r = run_one({**base, "path": path}, wait_policy(args))
            results[path].append(r)
            print(f"  round {rnd + 1} {path}: {r['images_per_s']:.3f} images/s, peak RSS {gib(r['peak_rss_bytes'])}, "
                  f"batch {r['batch_size']} chunk {r['chunk']}", flush=True)
    old_rate = statistics.median(r["images_per_s"] for r in results["old"])
    new_rate = statistics.median(r["images_per_s"] for r in results["new"])
    ratios = [n["images_per_s"] / o["images_per_s"] for o, n in zip(results["old"], results["new"])]
    old, new = results["old"][0], results["new"][0]
    diff = max(abs(old["metrics"][m] - new["metrics"][m]) for m in old["metrics"])
    print(f"{model}: {args.images} images, k={args.k}, {args.threads} threads, seed {args.seed}, "
          f"OMP_WAIT_POLICY {old['omp_wait_policy']}")
    for name, rate, r in (("old", old_rate, old), ("new", new_rate, new)):
        cpu = statistics.median(x["cpu_s_per_image"] for x in results[name])
        print(f"  {name}: {rate:.3f} images/s (median of {args.repeats}), peak RSS "
              f"{gib(max(x['peak_rss_bytes'] for x in results[name]))}, full test set ~{hms(FULL_TEST_SET / rate)} "
              f"(extrapolated), batch {r['batch_size']} chunk {r['chunk']}")
        print(f"       {cpu:.3f} CPU-s per image: on {args.threads} idle cores at perfect scaling the test set "
              f"would take ~{hms(cpu * FULL_TEST_SET / args.threads)}")
    print(f"  new/old speed: {new_rate / old_rate:.2f}x (per-round ratios {min(ratios):.2f}-{max(ratios):.2f}x)")
    print(f"  nll_iwae old {old['metrics']['nll_iwae']:.6f} new {new['metrics']['nll_iwae']:.6f}; "
          f"largest metric difference {diff:.2e} nats")


def pass_sweep(args, model: str) -> None:
    sizes = [int(s) for s in args.pass_sweep.split(",")]
    base = {"model": model, "images": args.images, "k": args.k, "seed": args.seed, "threads": args.threads,
            "path": "new"}
    rates: dict[int, list[float]] = {s: [] for s in sizes}
    for _ in range(args.repeats):
        for size in sizes:
            settings = {"batch_size": 500, "chunk": size // 500} if size >= 500 else {"batch_size": size, "chunk": 1}
            rates[size].append(run_one({**base, **settings}, wait_policy(args))["images_per_s"])
    first = statistics.median(rates[sizes[0]])
    print(f"{model}: images/s by decoder pass size (median of {args.repeats}; ratio to pass {sizes[0]})")
    for size in sizes:
        rate = statistics.median(rates[size])
        print(f"  pass {size:6d}: {rate:.3f} images/s  {rate / first:.2f}x")


def concurrent(args, model: str) -> None:
    cpus = len(os.sched_getaffinity(0))
    base = {"model": model, "images": args.images, "k": args.k, "seed": args.seed, "path": "new"}
    spin, passive = {"OMP_WAIT_POLICY": ""}, {"OMP_WAIT_POLICY": "PASSIVE"}
    alone = [("alone, OpenMP default wait", cpus, spin), ("alone, OMP_WAIT_POLICY=PASSIVE", cpus, passive)]
    pairs = [("pair, all CPUs each, OpenMP default wait", cpus, spin),
             ("pair, all CPUs each, OMP_WAIT_POLICY=PASSIVE", cpus, passive),
             (f"pair, CPUs split ({max(1, cpus // 2)} thread(s) each)", max(1, cpus // 2), spin)]
    rates: dict[str, list[float]] = {name: [] for name, _, _ in alone + pairs}
    for _ in range(args.repeats):
        for name, threads, env in alone:
            rates[name].append(run_one({**base, "threads": threads}, env)["images_per_s"])
        for name, threads, env in pairs:
            pair = [spawn({**base, "threads": threads}, env) for _ in range(2)]
            rates[name].append(statistics.mean(collect(p)["images_per_s"] for p in pair))
    reference = statistics.median(rates[alone[1][0]])
    print(f"{model}: {args.images} images per process, k={args.k}, on {cpus} CPUs (median of {args.repeats}; "
          f"ratios to one process alone with the passive policy, {reference:.3f} images/s)")
    for name, _, _ in alone + pairs:
        rate = statistics.median(rates[name])
        combined = f", {2 * rate / reference:.2f}x combined" if name.startswith("pair") else ""
        print(f"  {name:48s}: {rate:.3f} images/s per process, {rate / reference:.2f}x{combined}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["conv-vae-mnist", "dense-vae-mnist"])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--pass-sweep", default=None, help="comma-separated decoder pass sizes to time (new path)")
    parser.add_argument("--concurrent", action="store_true", help="time two processes at once")
    parser.add_argument("--omp-default", action="store_true",
                        help="run the paths with OpenMP's default (spinning) wait policy instead of PASSIVE")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        spec = json.loads(args.measure)
        if os.environ.get("OMP_WAIT_POLICY") == "":
            os.environ.pop("OMP_WAIT_POLICY")  # unset before torch loads: OpenMP's default policy
        print(json.dumps(measure(spec)))
        return
    import torch

    print(f"torch {torch.__version__}, {platform.machine()}, {len(os.sched_getaffinity(0))} CPUs, "
          f"load average {os.getloadavg()[0]:.2f} at the start (the machine may be shared)", flush=True)
    for model in args.models:
        if args.pass_sweep:
            pass_sweep(args, model)
        elif args.concurrent:
            concurrent(args, model)
        else:
            old_vs_new(args, model)


if __name__ == "__main__":
    main()
