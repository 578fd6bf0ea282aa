"""The training loop behind ``zoo train``: deterministic, resumable, interruptible, DDP-ready.

Everything model-specific comes from the model: ``model.loss(batch, step)`` gives the objective
and its named terms (checked by :func:`zoo.training.terms.check_terms`), ``model.dynamic_binarization``
says whether batches are binarized, ``model.configure_optimizer(config)`` builds the optimizer and
``model.on_train_step_end`` / ``model.on_train_epoch_end`` run per-step and per-epoch model logic.

Speed (see :class:`TrainConfig`): torch optimizers run their fused kernel where torch has one
for the device and the model left the choice open; models with 4-D (convolution) weights train
in channels_last on CPU; batches are binarized in uint8; on CPU the loss terms reach the host
once per step (a CPU has nothing to overlap), elsewhere every ``Trainer.sync_every`` steps.
These keep float32 arithmetic and bit-exact determinism. ``precision="bf16"`` (autocast) and
``compile=True`` (``torch.compile``) change the numerics and are opt-in; validation always runs
eagerly in float32, so validation metrics stay comparable across them.
"""

import dataclasses
import functools
import json
import math
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
import contextlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from zoo.checkpoint import WEIGHTS_NAME, atomic_write, sha256_file
from zoo.errors import ZooError
from zoo.model import Autoencoder
from zoo.training import distributed, state as ckpt
from zoo.training.batching import TrainBatches
from zoo.training.distributed import DistContext
from zoo.training.errors import TrainingError
from zoo.training.recipe import environment
from zoo.training.terms import check_terms

RECIPE = "recipe.json"
BEST = "best"  # run-folder subfolder: the weights of the epoch with the lowest validation loss
LR_SCHEDULES = ("constant", "cosine")
PRECISIONS = ("fp32", "bf16")
MEMORY_FORMATS = ("auto", "contiguous", "channels_last")
#: Version of the trainer's numerics (binarization noise, optimizer kernels, layouts), kept in checkpoints:
#: a checkpoint of another version resumes correctly but not bit-identically to an uninterrupted run.
NUMERICS = 2
SIGNAL_EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class Interrupted(ZooError):
    """SIGINT/SIGTERM stopped the run after a checkpoint was saved; ``exit_code`` is 128 + signal."""

    def __init__(self, message: str, signum: int, checkpoint: Path):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum
        self.checkpoint = checkpoint


@dataclasses.dataclass
class TrainConfig:
    """Optimisation settings. ``batch_size`` is global: each of N ranks takes ``batch_size / N``.

    Execution settings (all recorded in ``recipe.json`` and checked on resume):

    - ``precision``: ``"fp32"``, or ``"bf16"``: forward passes under ``torch.autocast`` in
      bfloat16 (weights and optimizer stay float32). Needs native bf16: a CUDA GPU that has it,
      or a CPU with AVX512-BF16/AMX-BF16 (x86) or BF16 (Arm); refused elsewhere.
    - ``compile``: run the loss (forward and backward) through ``torch.compile``; needs a C++
      compiler on CPU; not under torchrun yet.
    - ``memory_format``: ``"channels_last"`` stores 4-D weights and batches channels-last;
      ``"auto"`` does so on CPU for models that have 4-D (convolution) weights.
    - ``fused_optimizer``: step torch optimizers (Adam, AdamW, SGD, Adagrad) with their fused
      kernel on devices that have one, unless the model's ``configure_optimizer`` chose
      ``fused`` or ``foreach`` itself.
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    lr_schedule: str = "constant"
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    grad_clip: float = 0.0
    seed: int = 0
    val_batch_size: int = 1000
    train_limit: int | None = None
    val_limit: int | None = None
    precision: str = "fp32"
    compile: bool = False
    memory_format: str = "auto"
    fused_optimizer: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.val_batch_size < 1:
            raise TrainingError("epochs, batch_size and val_batch_size must be positive")
        if not self.lr > 0:
            raise TrainingError(f"lr must be > 0, got {self.lr}")
        for field, choices in (("lr_schedule", LR_SCHEDULES), ("precision", PRECISIONS),
                               ("memory_format", MEMORY_FORMATS)):
            if getattr(self, field) not in choices:
                raise TrainingError(f"{field} must be one of {', '.join(choices)}, got {getattr(self, field)!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def resume_key(self) -> dict[str, Any]:
        """Fields that must match to resume a run (epochs may grow)."""
        return {k: v for k, v in self.to_dict().items() if k != "epochs"}


@dataclasses.dataclass
class TrainResult:
    run_dir: Path
    epochs_completed: int
    global_step: int
    history: list[dict[str, Any]]
    final_metrics: dict[str, Any]
    weights_sha256: str


def _seed_for(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0] >> 1)


#: CPU capability flags (``torch.cpu.get_capabilities()``) that mean native bfloat16 arithmetic.
NATIVE_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16", "bf16", "sve_bf16")


def check_precision(precision: str, device: torch.device) -> None:
    """Raise a TrainingError saying why when ``device`` cannot train in ``precision`` natively."""
    if precision == "fp32":
        return
    if device.type == "cuda":
        if not torch.cuda.is_bf16_supported():
            raise TrainingError(f"precision bf16: {torch.cuda.get_device_name(device)} has no bfloat16 support; "
                                "train with precision fp32")
    elif device.type == "cpu":
        caps = torch.cpu.get_capabilities()
        if not any(caps.get(flag) for flag in NATIVE_BF16_CPU_FLAGS):
            raise TrainingError(f"precision bf16 needs a CPU with native bfloat16 arithmetic (AVX512-BF16 or "
                                f"AMX-BF16 on x86, BF16 on Arm); this one ({caps.get('cpu_name', 'unknown')}, "
                                f"{caps.get('architecture', 'unknown')}) has none, and emulated bfloat16 is slower "
                                "than fp32; train with precision fp32")
    else:
        raise TrainingError(f"precision bf16 is supported on cpu and cuda devices, not {device.type}")


def check_compile(ctx: DistContext) -> None:
    """Raise a TrainingError saying why when ``torch.compile`` cannot be used for this run."""
    if ctx.distributed:
        raise TrainingError("compile is not supported under torchrun (DDP) yet; train without --compile")
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        raise TrainingError(f"compile: torch.compile does not support Python {sys.version.split()[0]} on "
                            f"{sys.platform} with torch {torch.__version__}; train without --compile")
    if ctx.device.type == "cpu":
        compilers = [os.environ.get("CXX"), "g++", "c++", "clang++"]
        if not any(name and shutil.which(name) for name in compilers):
            raise TrainingError("compile on CPU needs a C++ compiler (g++ or clang++, or one named by $CXX) for "
                                "the code torch.compile generates; none was found; install one or train without "
                                "--compile")


def _overrides(model: nn.Module, hook: str) -> bool:
    """Whether ``model`` replaces the base class's no-op ``hook`` (in its class or on the instance)."""
    return hook in vars(model) or getattr(type(model), hook) is not getattr(Autoencoder, hook)


class _LossModule(nn.Module):
    """``forward`` = ``model.loss``, so DDP (which hooks ``forward``) synchronises the gradients."""

    def __init__(self, model: Autoencoder):
        super().__init__()
        self.model = model

    def forward(self, batch: torch.Tensor, step: int | None = None) -> dict[str, torch.Tensor]:
        return self.model.loss(batch, step=step)


class _StopFlag:
    """Records SIGINT/SIGTERM instead of raising, so the current step finishes and a checkpoint is saved."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        for sig in SIGNAL_EXIT_CODES:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals stay with whoever owns them
                pass
        return self

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C aborts at once
        self.signum = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


class Trainer:
    """Train ``model`` on ``train_data`` (an ImageDataset), validating on ``val_data`` every epoch.

    The run directory ``out`` receives ``model.safetensors`` + ``config.json`` (the latest
    weights, loadable with ``zoo.load(out)``), ``best/`` (the same for the epoch with the lowest
    validation loss so far among the epochs with the current objective, when there is validation
    data), ``checkpoint.json`` + ``checkpoints/`` (resume state, see :mod:`zoo.training.state`) and
    ``recipe.json``.
    """

    def __init__(self, model: Autoencoder, train_data, val_data, config: TrainConfig, out: str | Path, *,
                 data_name: str, command: str | None = None, ctx: DistContext | None = None,
                 progress: bool = True, log: Callable[[str], None] = print):
        self.model = model
        self.train_data = train_data
        self.val_data = val_data
        self.config = config
        self.out = Path(out)
        self.data_name = data_name
        self.command = command
        self.ctx = ctx or DistContext()
        self.progress = progress and self.ctx.is_main
        self.log = log if self.ctx.is_main else (lambda _msg: None)
        #: Steps between bringing the loss terms to the host (NaN check, running means, signals).
        #: None: every step on a CPU (free there) or when the model has an ``on_train_step_end``
        #: (which gets the terms as floats); every ``SYNC_EVERY`` steps on an accelerator.
        self.sync_every: int | None = None
        self.runtime: dict[str, Any] = {}  # what the run resolved: layout, optimizer kernel, threads
        if config.batch_size % self.ctx.world_size:
            raise TrainingError(f"batch size {config.batch_size} is not divisible by the world size "
                                f"{self.ctx.world_size}")
        check_precision(config.precision, self.ctx.device)
        if config.compile:
            check_compile(self.ctx)

    SYNC_EVERY = 32

    # -- setup --------------------------------------------------------------------------

    def _subset(self, data, limit):
        if limit is None or limit >= len(data):
            return data
        from torch.utils.data import TensorDataset

        return TensorDataset(*(t[:limit] for t in data.tensors))

    def _loader(self) -> TrainBatches:
        data = self._subset(self.train_data, self.config.train_limit)
        return TrainBatches(data, self.config.batch_size // self.ctx.world_size, shuffle=True, seed=self.config.seed,
                            dynamic_binarize=self.model.dynamic_binarization, rank=self.ctx.rank,
                            world_size=self.ctx.world_size, device=self.ctx.device)

    def _memory_format(self, model: nn.Module) -> torch.memory_format:
        """channels_last when asked, or for ``auto`` on CPU when the model has 4-D (convolution) weights."""
        choice = self.config.memory_format
        if choice == "auto":
            has_4d = any(p.dim() == 4 for p in model.parameters())
            choice = "channels_last" if has_4d and self.ctx.device.type == "cpu" else "contiguous"
        return torch.channels_last if choice == "channels_last" else torch.contiguous_format

    def _use_fused_kernel(self, optimizer: torch.optim.Optimizer) -> str:
        """Switch a torch optimizer to its fused kernel when allowed; say which implementation steps."""
        from torch.optim.optimizer import _get_fused_kernels_supported_devices

        groups = optimizer.param_groups
        params = [p for group in groups for p in group["params"]]
        chosen = any(group.get("fused") is not None or group.get("foreach") is not None for group in groups)
        eligible = (self.config.fused_optimizer and not chosen
                    and type(optimizer).__module__.startswith("torch.optim.")
                    and all("fused" in group and not group.get("differentiable") for group in groups)
                    and self.ctx.device.type in _get_fused_kernels_supported_devices()
                    and all(p.is_floating_point() and not p.is_sparse and p.device == self.ctx.device
                            for p in params))
        if eligible:
            for group in groups:
                group["fused"] = True
            return "fused"
        if any(group.get("fused") for group in groups):
            return "fused (chosen by the model)"
        return "foreach" if any(group.get("foreach") for group in groups) else "for-loop"

    @staticmethod
    def _match_layouts(optimizer: torch.optim.Optimizer) -> None:
        """Give restored optimizer state the memory layout of its parameter (fused kernels assume it)."""
        for group in optimizer.param_groups:
            for p in group["params"]:
                state = optimizer.state.get(p, {})
                for key, value in state.items():
                    if isinstance(value, torch.Tensor) and value.shape == p.shape and value.stride() != p.stride():
                        state[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)

    def _lr_factor(self, step: int, total: int) -> float:
        """The schedule's multiplier of every param group's initial lr before step ``step`` (0-based)."""
        c = self.config
        if c.lr_schedule == "constant" or total <= 0:
            return 1.0
        progress = min(1.0, step / total)
        return c.min_lr_ratio + (1 - c.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    @staticmethod
    def _set_lrs(optimizer: torch.optim.Optimizer, base_lrs: list[float], factor: float) -> None:
        for group, base in zip(optimizer.param_groups, base_lrs):
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(base * factor)  # tensor lrs (e.g. capturable optimizers) stay tensors
            else:
                group["lr"] = base * factor

    def _optimizer(self, model: Autoencoder) -> torch.optim.Optimizer:
        """``model.configure_optimizer(config)``, checked: a torch optimizer over the model's own parameters."""
        optimizer = model.configure_optimizer(self.config)
        where = f"{model.architecture}.configure_optimizer()"
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TrainingError(f"{where} returned a {type(optimizer).__name__}, not a torch.optim.Optimizer")
        own = {id(p) for p in model.parameters()}
        for index, group in enumerate(optimizer.param_groups):
            if "lr" not in group:
                raise TrainingError(f"{where} returned a {type(optimizer).__name__} whose param group {index} "
                                    "has no 'lr'; the trainer's lr schedule needs one per group")
            if any(id(p) not in own for p in group["params"]):
                raise TrainingError(f"{where}: param group {index} holds a tensor that is not a parameter of the "
                                    "model, so it would be neither checkpointed nor trained as part of it")
        return optimizer

    @contextmanager
    def _hook_rng(self, *parts: int):
        """The global RNG seeded from (seed, *parts), the same on every rank; the training RNG is restored after."""
        devices = [self.ctx.device] if self.ctx.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            seed = _seed_for(self.config.seed, *parts)
            torch.default_generator.manual_seed(seed)
            if devices:
                with torch.cuda.device(self.ctx.device):
                    torch.cuda.manual_seed(seed)
            yield

    # -- the loop ---------------------------------------------------------------------

    def fit(self, resume: bool = False) -> TrainResult:
        c, ctx = self.config, self.ctx
        started = time.time()
        model = self.model.to(ctx.device)
        layout = self._memory_format(model)
        if layout is torch.channels_last:
            model.to(memory_format=torch.channels_last)
        module: nn.Module = _LossModule(model)
        if ctx.distributed:
            from torch.nn.parallel import DistributedDataParallel

            module = DistributedDataParallel(module, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
        optimizer = self._optimizer(model)
        kernel = self._use_fused_kernel(optimizer)
        # each group's lr as configured: the schedule scales these, keeping the groups' ratios
        base_lrs = [float(group["lr"]) for group in optimizer.param_groups]
        loader = self._loader()
        steps_per_epoch = len(loader)
        total_steps = steps_per_epoch * c.epochs
        self.runtime = {"memory_format": "channels_last" if layout is torch.channels_last else "contiguous",
                        "optimizer_kernel": kernel, "threads": torch.get_num_threads(),
                        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "numerics": NUMERICS}

        epoch, start_batch, global_step = 0, 0, 0
        sums: dict[str, float] = {}
        history: list[dict[str, Any]] = []
        if resume:
            epoch, start_batch, global_step, sums, history = self._restore(optimizer, base_lrs)
            self._match_layouts(optimizer)
        else:
            torch.manual_seed(_seed_for(c.seed, 1, ctx.rank))
            if ctx.device.type == "cuda":
                torch.cuda.manual_seed(_seed_for(c.seed, 2, ctx.rank))
        if self.ctx.is_main:
            self.out.mkdir(parents=True, exist_ok=True)

        forward, dynamo = module, None
        if c.compile:
            import torch._dynamo as dynamo

            forward = torch.compile(module)
        autocast = (functools.partial(torch.autocast, ctx.device.type, dtype=torch.bfloat16)
                    if c.precision == "bf16" else contextlib.nullcontext)
        step_hook = _overrides(model, "on_train_step_end")
        sync_every = self.sync_every or (1 if step_hook or (ctx.device.type == "cpu" and not ctx.distributed)
                                         else self.SYNC_EVERY)
        if step_hook:
            sync_every = 1  # the hook gets this step's terms as floats
        pending: list[tuple[list[str], torch.Tensor]] = []  # (names, values) of steps not yet on the host

        def flush(epoch: int, batch_index: int, stop_signal: int, bar) -> tuple[list[float], int]:
            """Bring the pending steps' terms to the host: stop at the first non-finite loss (naming its
            step), add them to the running sums; return the last step's values and the agreed stop signal."""
            flat = torch.cat([values for _, values in pending]).double().cpu().tolist()
            rows, offset = [], 0
            for names, _ in pending:
                rows.append((names, flat[offset:offset + len(names)]))
                offset += len(names)
            bad = next((i for i, (names, row) in enumerate(rows) if not math.isfinite(row[names.index("loss")])),
                       None)
            first_bad = global_step - len(rows) + 1 + bad if bad is not None else math.inf
            flags = distributed.all_max(ctx, [float(stop_signal), -float(first_bad)])
            if flags[1] > -math.inf:
                bar.close()
                step = int(-flags[1])  # 0-based: the earliest non-finite loss on any rank
                batch = batch_index - (global_step - step)
                value = rows[bad][1][rows[bad][0].index("loss")] if step == first_bad else None
                last = ckpt.current_checkpoint(self.out)
                raise TrainingError(
                    f"loss is {value if value is not None else 'non-finite on another rank'} at step {step + 1} "
                    f"(epoch {epoch + 1}, batch {batch + 1}/{steps_per_epoch}); training stopped. "
                    f"Last good checkpoint: {last if last else 'none (no epoch finished)'}")
            for names, row in rows:
                for k, v in zip(names, row):
                    sums[k] = sums.get(k, 0.0) + v
            pending.clear()
            return rows[-1][1], int(flags[0])

        with _StopFlag() as stop:
            for epoch in range(epoch, c.epochs):
                loader.set_epoch(epoch)
                model.train()
                epoch_start, epoch_cpu = time.time(), time.process_time()
                bar = tqdm(total=steps_per_epoch, initial=start_batch, desc=f"epoch {epoch + 1}/{c.epochs}",
                           disable=not self.progress, dynamic_ncols=True, leave=True)
                for batch_index, (x, _y) in enumerate(loader.iterate(start_batch), start=start_batch):
                    if layout is torch.channels_last and x.dim() == 4:
                        x = x.contiguous(memory_format=torch.channels_last)
                    self._set_lrs(optimizer, base_lrs, self._lr_factor(global_step, total_steps))
                    if c.compile:  # one graph per batch size (the last batch is smaller), never a symbolic one
                        dynamo.mark_static(x, 0)
                    with autocast():
                        terms = forward(x, global_step)
                    names = check_terms(model.architecture, terms)
                    pending.append((names, torch.stack([terms[k].detach().float().reshape(()) for k in names])))
                    done = batch_index + 1
                    signum = 0
                    if len(pending) >= sync_every or done == steps_per_epoch:
                        values, signum = flush(epoch, batch_index, stop.signum or 0, bar)
                        if self.progress and (done % 20 < sync_every or done == steps_per_epoch):
                            bar.set_postfix({k: f"{v / done:.4g}" for k, v in sums.items()}, refresh=False)
                    optimizer.zero_grad(set_to_none=True)
                    terms["loss"].backward()
                    if c.grad_clip > 0:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip)
                    optimizer.step()
                    global_step += 1
                    if step_hook:
                        with torch.no_grad(), self._hook_rng(4, global_step):
                            model.on_train_step_end(global_step, dict(zip(names, values)))
                    bar.update(1)
                    if signum:
                        bar.close()
                        where = self._save(model, optimizer, base_lrs, epoch, done, global_step, sums, history)
                        self._write_recipe(history, global_step, epoch, started, status="interrupted")
                        name = signal.Signals(signum).name
                        raise Interrupted(f"{name} received: stopped after step {global_step} "
                                          f"(epoch {epoch + 1}, batch {done}/{steps_per_epoch}); checkpoint saved "
                                          f"to {where}; continue with the same command plus --resume",
                                          signum, where)
                bar.close()
                seconds, cpu_seconds = time.time() - epoch_start, time.process_time() - epoch_cpu
                with torch.no_grad(), self._hook_rng(5, epoch + 1):
                    model.on_train_epoch_end(epoch + 1)
                n = steps_per_epoch
                lrs = [float(group["lr"]) for group in optimizer.param_groups]
                record = {"epoch": epoch + 1, "step": global_step,
                          "train": {k: v / n for k, v in sums.items()},
                          "lr": lrs[0], **({"lrs": lrs} if len(lrs) > 1 else {}),
                          "seconds": round(seconds, 3), "cpu_seconds": round(cpu_seconds, 3)}  # cpu: all threads
                if start_batch == 0:  # a whole epoch in this process: its speed means something
                    record["images_per_s"] = round(len(loader.images) / seconds, 1)
                val = self.validate(model) if ctx.is_main else {}
                if val:
                    record["val"] = val
                    best = self._best(history, terms=val)
                    if math.isfinite(val.get("loss", math.nan)) and (best is None or val["loss"] < best["val"]["loss"]):
                        model.save_pretrained(self.out / BEST)
                history.append(record)
                self.log(self._epoch_line(record))
                sums, start_batch = {}, 0
                self._save(model, optimizer, base_lrs, epoch + 1, 0, global_step, sums, history)
        result = self._write_recipe(history, global_step, c.epochs, started, status="complete")
        distributed.barrier(ctx)
        return result

    @staticmethod
    def _epoch_line(record: dict[str, Any]) -> str:
        train = " ".join(f"{k}={v:.4f}" for k, v in record["train"].items())
        val = " ".join(f"{k}={v:.4f}" for k, v in record.get("val", {}).items())
        speed = f", {record['images_per_s']:,.0f} images/s" if "images_per_s" in record else ""
        return (f"epoch {record['epoch']}: train {train}" + (f" | val {val}" if val else "")
                + f" ({record['seconds']:.1f} s{speed})")

    @torch.no_grad()
    def validate(self, model: Autoencoder) -> dict[str, float]:
        """Mean loss terms on ``val_data`` in eval mode, with a fixed seed that leaves the training RNG untouched.

        Always eager and float32, whatever ``precision`` and ``compile`` say, so that validation
        metrics compare across them.
        """
        if self.val_data is None:
            return {}
        c = self.config
        data = self._subset(self.val_data, c.val_limit)
        batches = TrainBatches(data, c.val_batch_size, shuffle=False, seed=c.seed, rank=0, world_size=1,
                               dynamic_binarize=model.dynamic_binarization, device=self.ctx.device)
        channels_last = self.runtime.get("memory_format") == "channels_last"
        was_training = model.training
        model.eval()
        totals: dict[str, float] = {}
        count = 0
        devices = [self.ctx.device] if self.ctx.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(_seed_for(c.seed, 3))
            for x, _ in batches:
                if channels_last and x.dim() == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                terms = model.loss(x)
                check_terms(model.architecture, terms, requires_grad=False)
                for k, v in terms.items():
                    totals[k] = totals.get(k, 0.0) + float(v.detach().float().mean()) * len(x)
                count += len(x)
        model.train(was_training)
        return {k: v / count for k, v in totals.items()}

    # -- checkpoints --------------------------------------------------------------------

    def _rng_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {}
        for r, t in enumerate(distributed.gather_bytes(self.ctx, torch.get_rng_state())):
            tensors[f"cpu/rank{r}"] = t
        if self.ctx.device.type == "cuda":
            cuda_state = torch.cuda.get_rng_state(self.ctx.device)
            for r, t in enumerate(distributed.gather_bytes(self.ctx, cuda_state)):
                tensors[f"cuda/rank{r}"] = t
        return tensors

    def _save(self, model, optimizer, base_lrs: list[float], epoch: int, batch_in_epoch: int, global_step: int,
              sums: dict[str, float], history: list) -> Path | None:
        rng = self._rng_tensors()  # a collective: every rank takes part
        where = None
        if self.ctx.is_main:
            tensors, rest = ckpt.optimizer_to_tensors(optimizer)
            state = {"epoch": epoch, "batch_in_epoch": batch_in_epoch, "global_step": global_step,
                     "world_size": self.ctx.world_size, "train_config": self.config.to_dict(),
                     "data": self.data_name, "splits": self._splits(), "optimizer": rest, "base_lrs": base_lrs,
                     "running_sums": sums, "history": history, "threads": self.runtime.get("threads"),
                     "numerics": NUMERICS}
            where = ckpt.write_checkpoint(self.out, f"step-{global_step:08d}", model, tensors, rng, state)
            model.save_pretrained(self.out)  # the run folder always holds the latest weights
        distributed.barrier(self.ctx)
        return where

    def _restore(self, optimizer, base_lrs: list[float]) -> tuple[int, int, int, dict[str, float], list]:
        folder, state, opt_tensors, rng = ckpt.read_checkpoint(self.out)
        saved = TrainConfig(**state["train_config"])
        if saved.resume_key() != self.config.resume_key():
            diff = {k: (v, self.config.resume_key()[k]) for k, v in saved.resume_key().items()
                    if self.config.resume_key()[k] != v}
            raise TrainingError(f"cannot resume {self.out}: settings differ from the checkpoint "
                                f"(saved, now): {diff}")
        if state["world_size"] != self.ctx.world_size:
            raise TrainingError(f"cannot resume {self.out}: it was trained with {state['world_size']} process(es), "
                                f"now {self.ctx.world_size}")
        if state["data"] != self.data_name:
            raise TrainingError(f"cannot resume {self.out}: it was trained on {state['data']!r}, not {self.data_name!r}")
        if state.get("splits", self._splits()) != self._splits():
            raise TrainingError(f"cannot resume {self.out}: it was trained on the splits {state['splits']}, "
                                f"now {self._splits()}")
        if state.get("numerics") != NUMERICS:
            self.log(f"warning: {self.out} was checkpointed by a trainer with other numerics (version "
                     f"{state.get('numerics', 1)}, now {NUMERICS}: binarization noise, optimizer kernels); it resumes "
                     "correctly, but not bit-identically to an uninterrupted run of that version")
        threads = self.runtime.get("threads")
        if state.get("threads") is not None and self.ctx.device.type == "cpu" and state["threads"] != threads:
            self.log(f"warning: {self.out} was trained with {state['threads']} torch thread(s), now {threads}: "
                     "float results depend on the thread count, so the resumed run will not be bit-identical "
                     f"to an uninterrupted one; pass --threads {state['threads']} for that")
        from zoo.checkpoint import read_config, read_weights

        architecture, config = read_config(folder)
        if architecture != self.model.architecture or config != self.model.config.to_dict():
            raise TrainingError(f"cannot resume {self.out}: the model ({architecture}, {config}) differs from "
                                f"the one asked for ({self.model.architecture}, {self.model.config.to_dict()})")
        self.model.load_state_dict(read_weights(folder / WEIGHTS_NAME))
        self.model.to(self.ctx.device)
        self._restore_optimizer(optimizer, base_lrs, state, opt_tensors)
        torch.set_rng_state(rng[f"cpu/rank{self.ctx.rank}"])
        if self.ctx.device.type == "cuda" and f"cuda/rank{self.ctx.rank}" in rng:
            torch.cuda.set_rng_state(rng[f"cuda/rank{self.ctx.rank}"], self.ctx.device)
        self.log(f"resuming {self.out} from {folder.name}: epoch {state['epoch'] + 1}, "
                 f"batch {state['batch_in_epoch']}, step {state['global_step']}")
        return state["epoch"], state["batch_in_epoch"], state["global_step"], dict(state["running_sums"]), list(state["history"])

    def _restore_optimizer(self, optimizer, base_lrs: list[float], state: dict[str, Any],
                           tensors: dict[str, torch.Tensor]) -> None:
        """Load the checkpoint's optimizer state into the one ``configure_optimizer`` built, if it is the same kind."""
        where = f"cannot resume {self.out}: {self.model.architecture}.configure_optimizer()"
        saved_class = ckpt.saved_optimizer_class(state["optimizer"])
        now_class = f"{type(optimizer).__module__}.{type(optimizer).__qualname__}"
        if saved_class is not None and saved_class != now_class:
            raise TrainingError(f"{where} now returns a {now_class}, but the checkpoint holds a {saved_class}")
        saved_lrs = state.get("base_lrs")
        if saved_lrs is not None and saved_lrs != base_lrs:
            raise TrainingError(f"{where} now gives the param groups initial lrs {base_lrs}, but the checkpoint's "
                                f"were {saved_lrs}")
        try:
            optimizer.load_state_dict(ckpt.optimizer_from_tensors(tensors, state["optimizer"]))
        except (ValueError, KeyError) as error:
            raise TrainingError(f"{where} builds an optimizer whose param groups do not match the "
                                f"checkpoint's: {error}") from error

    @staticmethod
    def _best(history: list[dict[str, Any]], terms: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """The epoch record with the lowest finite validation loss (the first of equals), or None.

        Only epochs whose validation reports the same terms as ``terms`` (default: the last epoch's)
        compete: a model that changes its objective mid-run (mixture-vae's autoencoder pretraining,
        then the ELBO) starts the comparison afresh, since the two losses are not the same quantity.
        """
        names = set(terms if terms is not None else (history[-1].get("val", {}) if history else {}))
        scored = [h for h in history
                  if set(h.get("val", {})) == names and math.isfinite(h.get("val", {}).get("loss", math.nan))]
        return min(scored, key=lambda h: h["val"]["loss"]) if scored else None

    def _best_record(self, history: list[dict[str, Any]]) -> dict[str, Any] | None:
        """What recipe.json says about ``best/``: its epoch, validation metrics and weights' sha256."""
        best = self._best(history)
        weights = self.out / BEST / WEIGHTS_NAME
        if best is None or not weights.is_file():
            return None
        return {"path": BEST, "epoch": best["epoch"],
                "chosen_on": f"lowest validation loss, on the {self._splits()['val']!r} split",
                "val": best["val"], "weights_sha256": sha256_file(weights)}

    def _splits(self) -> dict[str, str | None]:
        return {"train": getattr(self.train_data, "split", None),
                "val": getattr(self.val_data, "split", None) if self.val_data is not None else None}

    def _data_record(self) -> dict[str, Any]:
        """What recipe.json says about the data: checksums, splits (and how they were cut), sizes."""
        c = self.config
        val_split = getattr(self.val_data, "split", None) if self.val_data is not None else None
        record = {"name": self.data_name, "checksum": getattr(self.train_data, "checksum", None),
                  "train_split": getattr(self.train_data, "split", None),
                  "train_images": min(len(self.train_data), c.train_limit or len(self.train_data)),
                  "val_split": val_split,
                  "val_images": (min(len(self.val_data), c.val_limit or len(self.val_data))
                                 if self.val_data is not None else 0),
                  "dynamic_binarization": bool(self.model.dynamic_binarization)}
        for key, data in (("train_selection", self.train_data), ("val_selection", self.val_data)):
            if getattr(data, "selection", None) is not None:
                record[key] = data.selection
        if val_split == "test":
            record["note"] = ("validated on the test split: epochs or settings chosen on these validation "
                              "metrics make a test-set evaluation of this run optimistic")
        return record

    def _write_recipe(self, history, global_step, epochs_completed, started, status) -> TrainResult | None:
        if not self.ctx.is_main:
            return None
        last = history[-1] if history else {}
        weights = self.out / WEIGHTS_NAME
        sha = sha256_file(weights) if weights.is_file() else None
        recipe = {
            "command": self.command,
            "status": status,
            "architecture": self.model.architecture,
            "model_config": self.model.config.to_dict(),
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "train_config": self.config.to_dict(),
            "data": self._data_record(),
            "runtime": self.runtime,
            "world_size": self.ctx.world_size,
            "backend": self.ctx.backend,
            **environment(self.ctx.device),
            "epochs_completed": len(history),
            "global_step": global_step,
            "wall_time_s": round(time.time() - started, 1),
            "final_metrics": {"train": last.get("train", {}), "val": last.get("val", {})},
            "weights_sha256": sha,
            "best": self._best_record(history),
            "history": history,
        }
        text = json.dumps(recipe, indent=2, default=str) + "\n"
        atomic_write(self.out / RECIPE, lambda tmp: tmp.write_text(text))
        return TrainResult(self.out, len(history), global_step, history, recipe["final_metrics"], sha)
