"""How much memory and how many CPU threads a run may use: the defaults ``zoo eval`` (and the trainer) pick.

Memory: :func:`available_memory` is what the device has free now (CUDA: ``torch.cuda.mem_get_info``;
CPU: ``MemAvailable`` from ``/proc/meminfo``, lowered to the cgroup's headroom inside a container;
``os.sysconf`` where there is no ``/proc``). psutil is not needed.

Threads: two torch processes on the same cores, each with one OpenMP thread per core, slow each
other down many times over (reported: about 14x for conv-vae training on 2 cores; measured with
benchmarks/eval_throughput.py --concurrent on 2 busy cores: two conv-vae evals each ran 5.5x
slower than with the fix below), because an OpenMP thread that finishes a parallel region *spins*
waiting for the next one and so burns the core that another process's thread needs. The fix is
:func:`passive_openmp_wait`: the threads sleep instead (``OMP_WAIT_POLICY=PASSIVE``; it has to be
in the environment before torch is imported). It is also what a lone process needs on a machine
that others keep busy (there it measured 4x). :func:`configure_threads` sets a predictable thread
count: an explicit one, else ``OMP_NUM_THREADS`` when the user set it, else the CPUs this process
may run on (its affinity mask). Splitting the cores (``--threads 1`` each on 2 cores) avoids the
spinning too, but with the passive policy it is not needed.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from zoo.errors import ZooError

if TYPE_CHECKING:
    import torch

#: The share of the free memory that the automatic batch sizes of ``zoo eval`` aim to stay under.
MEMORY_FRACTION = 0.25


# Threads ---------------------------------------------------------------------------------------


def cpu_count() -> int:
    """CPUs this process may run on: its affinity mask (taskset, cgroup cpusets), else ``os.cpu_count()``."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _omp_num_threads() -> int | None:
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if not value:
        return None
    first = value.split(",")[0]  # OpenMP allows a per-nesting-level list; the first level is ours
    try:
        threads = int(first)
    except ValueError:
        raise ZooError(f"OMP_NUM_THREADS={value!r} is not a whole number of threads") from None
    if threads < 1:
        raise ZooError(f"OMP_NUM_THREADS={value!r} must be at least 1")
    return threads


def default_threads() -> int:
    """The torch thread count to use when none is given: ``OMP_NUM_THREADS`` if set, else :func:`cpu_count`."""
    return _omp_num_threads() or cpu_count()


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op thread count to ``threads`` (default: :func:`default_threads`) and return it.

    For the trainer and ``zoo eval``: call it once at the start of a run. An explicit ``threads``
    wins over ``OMP_NUM_THREADS``.
    """
    import torch

    if threads is None:
        threads = default_threads()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ZooError(f"threads must be a whole number >= 1, got {threads!r}")
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def passive_openmp_wait() -> bool:
    """Make OpenMP threads sleep rather than spin between parallel regions, if it can still take effect.

    Sets ``OMP_WAIT_POLICY=PASSIVE`` unless the user chose a policy. OpenMP reads it once, when
    torch loads it, so it only works before ``import torch``: call it first thing in a command.
    Returns whether the passive policy is (or will be) in force. Child processes inherit it.
    """
    if "OMP_WAIT_POLICY" in os.environ:
        return os.environ["OMP_WAIT_POLICY"].strip().upper() == "PASSIVE"
    if "torch" in sys.modules:
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


# Memory ----------------------------------------------------------------------------------------


def _meminfo_available(path: Path = Path("/proc/meminfo")) -> int | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    fields = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            fields[name.strip()] = int(parts[0]) * (1024 if parts[1:2] == ["kB"] else 1)
    if "MemAvailable" in fields:
        return fields["MemAvailable"]
    if "MemFree" in fields:  # kernels before 3.14
        return fields["MemFree"] + fields.get("Cached", 0) + fields.get("Buffers", 0)
    return None


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max" (no limit) -> None


def _cgroup_headroom(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Bytes left under this process's cgroup memory limit, or None without a limit."""
    for limit_file, usage_file in (("memory.max", "memory.current"),  # cgroup v2
                                   ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):  # v1
        limit, usage = _read_int(root / limit_file), _read_int(root / usage_file)
        if limit is not None and usage is not None and limit < 1 << 60:  # v1 reports "no limit" as ~2**63
            return max(0, limit - usage)
    return None


def system_available_memory() -> int:
    """Bytes of RAM that can be allocated now without swapping (MemAvailable, within any cgroup limit)."""
    available = _meminfo_available()
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            raise ZooError("cannot tell how much memory is free (no /proc/meminfo and no sysconf): "
                           "pass --batch-size and --chunk") from None
    headroom = _cgroup_headroom()
    return min(available, headroom) if headroom is not None else available


def available_memory(device: torch.device | str) -> int:
    """Bytes free for tensors on ``device`` now: free GPU memory for CUDA, available RAM otherwise."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return system_available_memory()


def memory_budget(device: torch.device | str, fraction: float = MEMORY_FRACTION) -> int:
    """``fraction`` of :func:`available_memory` on ``device``: what automatic batch sizes aim to stay under."""
    if not 0 < fraction <= 1:
        raise ZooError(f"memory fraction must be in (0, 1], got {fraction}")
    return int(available_memory(device) * fraction)


def activation_bytes(module: torch.nn.Module, fn, *args) -> int:
    """Bytes of every tensor the leaf modules of ``module`` output during ``fn(*args)``, plus its result.

    An upper bound on the activation memory of an inference pass (tensors freed along the way are
    counted too); work done by functional calls outside any module is not seen, so callers add a
    margin. Runs under ``torch.no_grad`` with the global RNGs restored afterwards.
    """
    import torch

    total = 0

    def count(value) -> int:
        if isinstance(value, torch.Tensor):
            return value.numel() * value.element_size()
        if isinstance(value, (list, tuple)):
            return sum(count(v) for v in value)
        if isinstance(value, dict):
            return sum(count(v) for v in value.values())
        return 0

    def hook(_module, _inputs, output):
        nonlocal total
        total += count(output)

    handles = [m.register_forward_hook(hook) for m in module.modules() if next(m.children(), None) is None]
    devices = [d for d in {p.device for p in module.parameters()} if d.type == "cuda"]
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            out = fn(*args)
    finally:
        for handle in handles:
            handle.remove()
    return total + count(out)


# Automatic batch sizes for zoo eval ------------------------------------------------------------

#: The most images per batch picked automatically (the old fixed default): more does not speed a pass up.
AUTO_MAX_BATCH = 500
#: The most importance samples per image per pass picked automatically: the likelihood set draws its
#: noise 100 samples at a time, so a pass never holds more of them anyway.
AUTO_MAX_CHUNK = 100
#: On a CPU, an automatic decoder pass aims at about this many bytes of activations: larger passes
#: fall out of the caches and map fresh pages on every pass, and run slower (see benchmarks/eval_throughput.py).
CPU_PASS_BYTES = 64 << 20
#: Estimated bytes are multiplied by this before they are compared with the budget.
SAFETY = 2.0


def _probe_batch(model, shape, n: int = 4):
    import torch

    return torch.zeros((n, *shape), device=model.device, dtype=next(model.parameters()).dtype)


@contextlib.contextmanager
def _eval_mode(model):
    training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(training)


def image_bytes(model) -> int:
    """Estimated activation bytes per image of a forward pass (``model(x)``), from a probe on 4 images.

    A model whose forward pass cannot run on zeros shaped like its input gets a generous guess
    instead: 64 float32 copies of an image.
    """
    with _eval_mode(model):
        try:
            return max(1, activation_bytes(model, model, _probe_batch(model, model.input_shape)) // 4)
        except Exception:
            return 64 * 4 * math.prod(model.data_shape)


def decoder_sample_bytes(model) -> int:
    """Estimated bytes per importance sample of the IWAE bound: the activations of ``decoder_logits``
    on one latent vector (from a probe on 4), plus the latent and two image-sized temporaries of the
    log-likelihood."""
    with _eval_mode(model):
        z = _probe_batch(model, (model.latent_dim,))
        decoder = activation_bytes(model, model.decoder_logits, z) // 4
        image = 4 * math.prod(model.input_shape)
    return decoder + 2 * image + z[0].numel() * z.element_size()


def _uses_iwae(model) -> bool:
    return (callable(getattr(model, "importance_weighted_log_likelihood", None))
            and callable(getattr(model, "decoder_logits", None)) and bool(getattr(model, "latent_dim", None)))


def eval_batch_sizes(model, device: torch.device | str, *, k: int, batch_size: int | str = "auto",
                     chunk: int | str = "auto", budget: int | None = None) -> dict:
    """``batch_size`` and ``chunk`` for ``zoo eval``, each an explicit number or "auto".

    "auto" sizes them from ``budget`` (default: :func:`memory_budget` of ``device``, a quarter of
    what is free) and the model's estimated bytes per image and per decoder sample (probe passes,
    times :data:`SAFETY`): a batch of images, and a decoder pass of ``batch_size * chunk`` samples
    in the likelihood set, stay within the budget. On a CPU the pass also aims at about
    :data:`CPU_PASS_BYTES`, which is faster than larger passes. Explicit values are kept as given.
    Returns ``{"batch_size", "chunk", "auto": [names chosen here], "memory_budget_bytes"}``.
    """
    import torch

    for name, value in (("batch_size", batch_size), ("chunk", chunk)):
        if value != "auto" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ZooError(f"{name} must be a whole number >= 1 or 'auto', got {value!r}")
    auto = [name for name, value in (("batch_size", batch_size), ("chunk", chunk)) if value == "auto"]
    settings = {"batch_size": batch_size, "chunk": chunk, "auto": auto, "memory_budget_bytes": None}
    if not auto:
        return settings
    device = torch.device(device)
    if budget is None:
        budget = memory_budget(device)
    settings["memory_budget_bytes"] = int(budget)
    samples = None  # decoder samples per pass of the likelihood set
    if _uses_iwae(model):
        per_sample = decoder_sample_bytes(model)
        samples = budget / (SAFETY * per_sample)
        if device.type == "cpu":
            samples = min(samples, CPU_PASS_BYTES / per_sample)
        samples = max(1, int(samples))
    if batch_size == "auto":
        cap = budget / (SAFETY * image_bytes(model))
        if samples is not None:
            cap = min(cap, samples)  # a pass of one sample per image must fit too
        batch_size = int(max(1, min(AUTO_MAX_BATCH, cap)))
    if chunk == "auto":
        # Only the likelihood set uses chunk; for other models keep the old default (a plugin set may read it).
        chunk = AUTO_MAX_CHUNK if samples is None else int(max(1, min(AUTO_MAX_CHUNK, k, samples // batch_size)))
    settings.update(batch_size=batch_size, chunk=chunk)
    return settings
