"""The training loop behind ``zoo train``: deterministic, resumable, interruptible, DDP-ready.

Everything model-specific comes from the model: ``model.loss(batch, step)`` gives the objective
and its named terms (checked by :func:`zoo.training.terms.check_terms`), ``model.dynamic_binarization``
says whether batches are binarized, ``model.configure_optimizer(config)`` builds the optimizer and
``model.on_train_step_end`` / ``model.on_train_epoch_end`` run per-step and per-epoch model logic.
"""

import dataclasses
import json
import math
import signal
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from zoo.checkpoint import WEIGHTS_NAME, atomic_write, sha256_file
from zoo.data import Batches
from zoo.errors import ZooError
from zoo.model import Autoencoder
from zoo.training import distributed, state as ckpt
from zoo.training.distributed import DistContext
from zoo.training.errors import TrainingError
from zoo.training.recipe import environment
from zoo.training.terms import check_terms

RECIPE = "recipe.json"
LR_SCHEDULES = ("constant", "cosine")
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
    """Optimisation settings. ``batch_size`` is global: each of N ranks takes ``batch_size / N``."""

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

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.val_batch_size < 1:
            raise TrainingError("epochs, batch_size and val_batch_size must be positive")
        if not self.lr > 0:
            raise TrainingError(f"lr must be > 0, got {self.lr}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise TrainingError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")

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
    weights, loadable with ``zoo.load(out)``), ``checkpoint.json`` + ``checkpoints/`` (resume
    state, see :mod:`zoo.training.state`) and ``recipe.json``.
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
        if config.batch_size % self.ctx.world_size:
            raise TrainingError(f"batch size {config.batch_size} is not divisible by the world size "
                                f"{self.ctx.world_size}")

    # -- setup --------------------------------------------------------------------------

    def _subset(self, data, limit):
        if limit is None or limit >= len(data):
            return data
        from torch.utils.data import TensorDataset

        return TensorDataset(*(t[:limit] for t in data.tensors))

    def _loader(self) -> Batches:
        data = self._subset(self.train_data, self.config.train_limit)
        return Batches(data, self.config.batch_size // self.ctx.world_size, shuffle=True, seed=self.config.seed,
                       dynamic_binarize=self.model.dynamic_binarization, rank=self.ctx.rank,
                       world_size=self.ctx.world_size, device=self.ctx.device)

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
        module: nn.Module = _LossModule(model)
        if ctx.distributed:
            from torch.nn.parallel import DistributedDataParallel

            module = DistributedDataParallel(module, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
        optimizer = self._optimizer(model)
        # each group's lr as configured: the schedule scales these, keeping the groups' ratios
        base_lrs = [float(group["lr"]) for group in optimizer.param_groups]
        loader = self._loader()
        steps_per_epoch = len(loader)
        total_steps = steps_per_epoch * c.epochs

        epoch, start_batch, global_step = 0, 0, 0
        sums: dict[str, float] = {}
        history: list[dict[str, Any]] = []
        if resume:
            epoch, start_batch, global_step, sums, history = self._restore(optimizer, base_lrs)
        else:
            torch.manual_seed(_seed_for(c.seed, 1, ctx.rank))
            if ctx.device.type == "cuda":
                torch.cuda.manual_seed(_seed_for(c.seed, 2, ctx.rank))
        if self.ctx.is_main:
            self.out.mkdir(parents=True, exist_ok=True)

        with _StopFlag() as stop:
            for epoch in range(epoch, c.epochs):
                loader.set_epoch(epoch)
                model.train()
                epoch_start = time.time()
                bar = tqdm(total=steps_per_epoch, initial=start_batch, desc=f"epoch {epoch + 1}/{c.epochs}",
                           disable=not self.progress, dynamic_ncols=True, leave=True)
                batch_index = 0
                for batch_index, (x, _y) in enumerate(loader):
                    if batch_index < start_batch:
                        continue  # replay the epoch's order and binarization noise up to the resume point
                    self._set_lrs(optimizer, base_lrs, self._lr_factor(global_step, total_steps))
                    terms = module(x, global_step)
                    names = check_terms(model.architecture, terms)
                    values = torch.stack([terms[k].detach().float().reshape(()) for k in names]).tolist()
                    loss_value = values[names.index("loss")]
                    bad = 0.0 if math.isfinite(loss_value) else 1.0
                    flags = distributed.all_max(ctx, [bad, float(stop.signum or 0)])
                    if flags[0]:
                        bar.close()
                        last = ckpt.current_checkpoint(self.out)
                        raise TrainingError(
                            f"loss is {loss_value if bad else 'non-finite on another rank'} at step {global_step + 1} "
                            f"(epoch {epoch + 1}, batch {batch_index + 1}/{steps_per_epoch}); training stopped. "
                            f"Last good checkpoint: {last if last else 'none (no epoch finished)'}")
                    optimizer.zero_grad(set_to_none=True)
                    terms["loss"].backward()
                    if c.grad_clip > 0:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip)
                    optimizer.step()
                    global_step += 1
                    with torch.no_grad(), self._hook_rng(4, global_step):
                        model.on_train_step_end(global_step, dict(zip(names, values)))
                    for k, v in zip(names, values):
                        sums[k] = sums.get(k, 0.0) + v
                    done = batch_index + 1
                    bar.update(1)
                    if self.progress and (done % 20 == 0 or done == steps_per_epoch):
                        bar.set_postfix({k: f"{v / (done):.4g}" for k, v in sums.items()}, refresh=False)
                    if flags[1]:
                        bar.close()
                        signum = int(flags[1])
                        where = self._save(model, optimizer, base_lrs, epoch, done, global_step, sums, history)
                        self._write_recipe(history, global_step, epoch, started, status="interrupted")
                        name = signal.Signals(signum).name
                        raise Interrupted(f"{name} received: stopped after step {global_step} "
                                          f"(epoch {epoch + 1}, batch {done}/{steps_per_epoch}); checkpoint saved "
                                          f"to {where}; continue with the same command plus --resume",
                                          signum, where)
                bar.close()
                with torch.no_grad(), self._hook_rng(5, epoch + 1):
                    model.on_train_epoch_end(epoch + 1)
                n = steps_per_epoch
                lrs = [float(group["lr"]) for group in optimizer.param_groups]
                record = {"epoch": epoch + 1, "step": global_step,
                          "train": {k: v / n for k, v in sums.items()},
                          "lr": lrs[0], **({"lrs": lrs} if len(lrs) > 1 else {}),
                          "seconds": round(time.time() - epoch_start, 3)}
                val = self.validate(model) if ctx.is_main else {}
                if val:
                    record["val"] = val
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
        return f"epoch {record['epoch']}: train {train}" + (f" | val {val}" if val else "") + f" ({record['seconds']:.1f} s)"

    @torch.no_grad()
    def validate(self, model: Autoencoder) -> dict[str, float]:
        """Mean loss terms on ``val_data`` in eval mode, with a fixed seed that leaves the training RNG untouched."""
        if self.val_data is None:
            return {}
        c = self.config
        data = self._subset(self.val_data, c.val_limit)
        batches = Batches(data, c.val_batch_size, shuffle=False, seed=c.seed, rank=0, world_size=1,
                          dynamic_binarize=model.dynamic_binarization, device=self.ctx.device)
        was_training = model.training
        model.eval()
        totals: dict[str, float] = {}
        count = 0
        devices = [self.ctx.device] if self.ctx.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(_seed_for(c.seed, 3))
            for x, _ in batches:
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
                     "data": self.data_name, "optimizer": rest, "base_lrs": base_lrs, "running_sums": sums,
                     "history": history}
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
            "data": {"name": self.data_name, "checksum": getattr(self.train_data, "checksum", None),
                     "train_images": min(len(self.train_data), self.config.train_limit or len(self.train_data)),
                     "val_images": (min(len(self.val_data), self.config.val_limit or len(self.val_data))
                                    if self.val_data is not None else 0),
                     "val_split": getattr(self.val_data, "split", None),
                     "dynamic_binarization": bool(self.model.dynamic_binarization)},
            "world_size": self.ctx.world_size,
            "backend": self.ctx.backend,
            **environment(self.ctx.device),
            "epochs_completed": len(history),
            "global_step": global_step,
            "wall_time_s": round(time.time() - started, 1),
            "final_metrics": {"train": last.get("train", {}), "val": last.get("val", {})},
            "weights_sha256": sha,
            "history": history,
        }
        text = json.dumps(recipe, indent=2, default=str) + "\n"
        atomic_write(self.out / RECIPE, lambda tmp: tmp.write_text(text))
        return TrainResult(self.out, len(history), global_step, history, recipe["final_metrics"], sha)
