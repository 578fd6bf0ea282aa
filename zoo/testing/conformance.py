"""``check_architecture``: every part of the model contract, checked on one architecture class.

Each check is a function of a :class:`_Run`; it records violations instead of stopping, so one
call reports everything that is wrong. The checks, in order (see :data:`CHECKS`):

- ``registration``: what the registry validates (base class, name, config class, declared tasks);
- ``config``: the default config and presets build, survive a JSON round trip, and reject an
  unknown field and a wrongly typed value with ``ConfigError``;
- ``build``: the model builds from its config, has parameters, and declares sane shapes;
- ``tasks``: every declared task, run as the server runs it (``run_task``) with an input of the
  task's kind: output type, dtype, shape, range, finiteness, determinism and batch independence;
- ``loss``: ``loss(batch, step=0)`` returns named scalar terms with a finite, differentiable
  ``"loss"``, and ``loss(batch)`` works under ``no_grad`` in eval mode (validation);
- ``train``: two optimiser steps through the real :class:`~zoo.training.Trainer`;
- ``checkpoint``: ``save_pretrained`` then load gives bit-identical weights and outputs, and two
  saves give byte-identical files;
- ``handler``: the TorchServe handler's service, in process, answers one request per task with
  what the model computes;
- ``evaluation``: the ``zoo eval`` metric sets that apply give finite numbers on a tiny dataset
  (reported as not run when none applies);
- ``package`` (only with ``package=True``): ``zoo package`` builds a ``.mar`` whose unpacked
  handler loads and answers.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import traceback
import typing
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from zoo.config import ModelConfig
from zoo.errors import ConfigError, PluginError, ZooError
from zoo.model import Autoencoder
from zoo.tasks import TASKS

CHECKS = ("registration", "config", "build", "tasks", "loss", "train", "checkpoint", "handler", "evaluation",
          "package")
#: Tolerance for "the same result" across batch sizes (different kernels may sum in another order).
BATCH_TOLERANCE = 1e-4
#: Served images travel as 8-bit PNGs.
PNG_TOLERANCE = 1.5 / 255


@dataclasses.dataclass
class ConformanceReport:
    """What ``check_architecture`` found: checks that passed, violations and checks it could not run."""

    architecture: str
    passed: list[str] = dataclasses.field(default_factory=list)
    violations: list[str] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def summary(self) -> str:
        lines = [f"{self.architecture}: {len(self.passed)} checks passed, {len(self.violations)} violation(s)"]
        lines += [f"  - {v}" for v in self.violations]
        lines += [f"  (not run) {s}" for s in self.skipped]
        return "\n".join(lines)


class ConformanceError(ZooError, AssertionError):
    """An architecture breaks the model contract; ``report.violations`` lists every violation."""

    def __init__(self, report: ConformanceReport):
        self.report = report
        super().__init__(report.summary())


class _Violation(Exception):
    """Raised inside a check to record one violation and end that check."""


class _NotApplicable(Exception):
    """Raised inside a check that does not apply to this architecture; the reason is reported."""


@dataclasses.dataclass
class _Run:
    cls: type
    config: ModelConfig | None
    workdir: Path
    report: ConformanceReport
    check: str = ""
    model: Autoencoder | None = None
    checkpoint: Path | None = None

    def fail(self, message: str) -> None:
        self.report.violations.append(f"{self.check}: {message}")

    def require(self, condition: bool, message: str) -> None:
        if not condition:
            raise _Violation(message)

    def seeded(self, function: Callable[[], Any], seed: int = 0) -> Any:
        """``function()`` with the global RNG seeded, leaving the caller's RNG state as it was."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return function()


def check_architecture(architecture: type | str, *, config: dict[str, Any] | None = None, preset: str | None = None,
                       workdir: str | Path | None = None, package: bool = False) -> ConformanceReport:
    """Run the whole model contract on ``architecture`` (a class, or the name of a registered one).

    ``preset`` and ``config`` (field overrides) choose the config the model is built from: keep it
    small, since the checks train, save and serve it. ``workdir`` holds the files the checks write
    (a temporary directory by default). ``package=True`` also builds and loads a ``.mar``, which
    needs the plugin installed (found through its entry point) and takes a few seconds more.

    Raises :class:`ConformanceError` listing every violation; returns the report otherwise.
    """
    cls = _resolve(architecture)
    name = getattr(cls, "architecture", None) or getattr(cls, "__name__", repr(cls))
    report = ConformanceReport(str(name))
    with tempfile.TemporaryDirectory(prefix="zoo-conformance-") as tmp:
        run = _Run(cls, None, Path(workdir) if workdir is not None else Path(tmp), report)
        run.workdir.mkdir(parents=True, exist_ok=True)
        steps: list[tuple[str, Callable[[_Run], None], bool]] = [
            ("registration", _registration, True),
            ("config", lambda r: _config(r, preset, config), True),
            ("build", _build, True),
            ("tasks", _tasks, False),
            ("loss", _loss, False),
            ("train", _train, False),
            ("checkpoint", _checkpoint, False),
            ("handler", _handler, False),
            ("evaluation", _evaluation, False),
        ]
        if package:
            steps.append(("package", _package, False))
        for position, (check, function, required) in enumerate(steps):
            run.check = check
            before = len(report.violations)
            try:
                function(run)
            except _NotApplicable as exc:
                report.skipped.append(f"{check}: {exc}")
                continue
            except _Violation as exc:
                run.fail(str(exc))
            except Exception as exc:  # the plugin's own code raised: say where
                run.fail(_raised(exc))
            if len(report.violations) == before:
                report.passed.append(check)
            elif required:
                report.skipped += [f"{later}: needs {check}" for later, _, _ in steps[position + 1:]]
                break
    if report.violations:
        raise ConformanceError(report)
    return report


def _resolve(architecture: type | str) -> type:
    if isinstance(architecture, str):
        from zoo.plugins import get_host

        return get_host().registry.architecture(architecture)
    return architecture


def _raised(exc: BaseException) -> str:
    """'raised TypeError: ... (at file.py:12 in fn)', at the innermost frame outside torch (the author's code)."""
    torch_dir = str(Path(torch.__file__).parent)
    frames = traceback.extract_tb(exc.__traceback__)
    own = [f for f in frames if not f.filename.startswith(torch_dir)] or frames
    where = f" (at {Path(own[-1].filename).name}:{own[-1].lineno} in {own[-1].name})" if own else ""
    text = " ".join(str(exc).split())
    return f"raised {type(exc).__name__}: {text[:400]}{where}"


# ------------------------------------------------------------------------------------------
# registration, config, build


def _registration(run: _Run) -> None:
    from zoo.registry import validate_architecture

    try:
        validate_architecture(run.cls)
    except PluginError as exc:
        raise _Violation(str(exc)) from None


def _config(run: _Run, preset: str | None, overrides: dict[str, Any] | None) -> None:
    cls, config_class = run.cls, run.cls.config_class
    default = config_class()
    text = json.dumps(default.to_dict())
    if config_class.from_dict(json.loads(text)) != default:
        run.fail("the default config changes in a JSON round trip (to_dict -> json -> from_dict)")
    for name, values in cls.presets.items():
        try:
            config_class.from_dict(values)
        except Exception as exc:
            run.fail(f"preset {name!r} is invalid: {exc}")
    try:
        config_class.from_dict({**default.to_dict(), "no_such_field_": 1})
        run.fail("from_dict accepted an unknown field; it must raise ConfigError")
    except ConfigError:
        pass
    hints = typing.get_type_hints(config_class)
    for field in dataclasses.fields(config_class):
        wrong = _wrongly_typed(hints[field.name])
        if wrong is None:
            continue
        try:
            config_class.from_dict({**default.to_dict(), field.name: wrong})
            run.fail(f"field {field.name!r} accepted {wrong!r}; a wrongly typed value must raise ConfigError")
        except ConfigError:
            pass
        except Exception as exc:
            run.fail(f"field {field.name!r} = {wrong!r} raised {type(exc).__name__} instead of ConfigError: {exc}")
    if preset is not None and preset not in cls.presets:
        raise _Violation(f"asked for preset {preset!r}, but the presets are: {', '.join(cls.presets) or 'none'}")
    values = {**cls.presets.get(preset, {}), **(overrides or {})}
    try:
        run.config = config_class.from_dict({**default.to_dict(), **values})
    except ConfigError as exc:
        raise _Violation(f"the config to check is invalid: {exc}") from None


def _wrongly_typed(hint: Any) -> Any:
    """A JSON value of the wrong type for a field of a type ModelConfig checks (None for other types)."""
    if hint is str:
        return 1.5
    if hint in (int, float, bool) or typing.get_origin(hint) is tuple:
        return "not-a-value"
    return None


def _build(run: _Run) -> None:
    model = run.seeded(lambda: run.cls(run.config))
    run.require(isinstance(model, Autoencoder), "the class did not build an Autoencoder")
    run.require(any(p.requires_grad for p in model.parameters()), "the model has no trainable parameters")
    for attribute in ("input_shape", "data_shape"):
        try:
            shape = tuple(getattr(model, attribute))
        except AttributeError as exc:  # nn.Module turns a property's AttributeError into a confusing one
            raise _Violation(f"{attribute} failed ({exc}); the default reads config.image_channels and "
                             "config.image_size: add those fields to the config or override the property") from None
        run.require(len(shape) == 3 and all(isinstance(s, int) and s > 0 for s in shape),
                    f"{attribute} must be (C, H, W) of positive ints, got {shape!r}")
    latent = model.latent_dim
    run.require(latent is None or (isinstance(latent, int) and not isinstance(latent, bool) and latent > 0),
                f"latent_dim must be None or a positive int, got {latent!r}")
    takes_latent = [t for t in model.tasks if TASKS[t].input == "latent"]
    run.require(latent is not None or not takes_latent,
                f"task(s) {', '.join(takes_latent)} take a latent, so latent_dim must be an int (the length of "
                "the flattened latent a client sends), not None")
    run.model = model.eval()


# ------------------------------------------------------------------------------------------
# tasks


def task_input(model: Autoencoder, task: str, n: int, seed: int = 0) -> Any:
    """An input of the kind ``task`` takes: 8-bit images, latents a real client would send, or a count.

    Latents come from ``encode`` when the model declares it (so they are valid codes even when the
    latent is not a Gaussian vector), otherwise from a standard normal.
    """
    kind = TASKS[task].input
    generator = torch.Generator().manual_seed(seed)
    if kind == "count":
        return n
    if kind == "latent" and "encode" in model.tasks:
        with torch.no_grad():
            return model.run_task("encode", task_input(model, "encode", n, seed)).float()
    if kind == "latent":
        return torch.randn(n, model.latent_dim, generator=generator)
    return torch.randint(0, 256, (n, *model.input_shape), generator=generator).float() / 255


def run_task(run: _Run, model: Autoencoder, task: str, inputs: Any, seed: int = 0) -> torch.Tensor:
    return run.seeded(lambda: model.run_task(task, inputs, generator=torch.Generator().manual_seed(seed)), seed)


def _tasks(run: _Run) -> None:
    model = run.model
    for task in model.tasks:
        try:
            _one_task(run, model, task)
        except _Violation as exc:
            run.fail(f"{task}: {exc}")
        except Exception as exc:
            run.fail(f"{task}: {_raised(exc)}")


def _one_task(run: _Run, model: Autoencoder, task: str) -> None:
    n = 3
    inputs = task_input(model, task, n)
    out = run_task(run, model, task, inputs)
    for problem in output_problems(model, task, out, n):
        run.fail(f"{task}: {problem}")
    again = run_task(run, model, task, inputs)
    run.require(torch.equal(out, again), "two runs with the same input and seed differ (in eval mode a task "
                                         "must be deterministic given the RNG seed)")
    if TASKS[task].input != "count" and not draws_randomly(run, model, task, inputs):
        single = run_task(run, model, task, inputs[:1])
        run.require(torch.allclose(single, out[:1], rtol=BATCH_TOLERANCE, atol=BATCH_TOLERANCE),
                    "the first item's output depends on the rest of the batch (the server batches requests "
                    f"together): max difference {float((single - out[:1]).abs().max()):.3g}")
    if task == "encode" and "decode" in model.tasks:
        decoded = run_task(run, model, "decode", out)
        for problem in output_problems(model, "decode", decoded, n):
            run.fail(f"decode(encode(x)): {problem}")


def draws_randomly(run: _Run, model: Autoencoder, task: str, inputs: Any) -> bool:
    """Whether ``task`` samples from the global RNG (its output changes with the seed).

    Such a task cannot be compared across batch shapes or with a server, which does not seed
    the RNG of an image or latent request; a count task gets its seed from the request.
    """
    return not torch.equal(run_task(run, model, task, inputs, seed=0), run_task(run, model, task, inputs, seed=1))


def output_problems(model: Autoencoder, task: str, out: Any, n: int) -> list[str]:
    """How ``out`` (the result of ``task`` on ``n`` inputs) breaks the task's declared output kind."""
    if not isinstance(out, torch.Tensor):
        return [f"returned {type(out).__name__}, not a tensor"]
    shape = tuple(out.shape)
    problems = []
    if not out.is_floating_point():
        problems.append(f"returned dtype {out.dtype}; task outputs must be floating point")
    if not shape or shape[0] != n:
        problems.append(f"returned shape {shape} for {n} inputs; the first dimension must be the batch")
    kind = TASKS[task].output
    if kind == "image":
        allowed = {tuple(model.input_shape), tuple(model.data_shape)}
        if len(shape) != 4 or shape[1:] not in allowed:
            problems.append(f"returned shape {shape}; images must be (N, C, H, W) with (C, H, W) one of "
                            f"{sorted(allowed)}")
        elif out.is_floating_point() and torch.isfinite(out).all() and (out.min() < 0 or out.max() > 1):
            problems.append(f"returned pixel values in [{float(out.min()):.3g}, {float(out.max()):.3g}]; "
                            "images must be in [0, 1]")
    elif kind == "vector":
        if len(shape) != 2:
            problems.append(f"returned shape {shape}; vectors must be (N, D)")
        elif task == "encode" and model.latent_dim is not None and shape[1] != model.latent_dim:
            problems.append(f"returned vectors of length {shape[1]}, but latent_dim is {model.latent_dim} "
                            "(what decode takes and what a client sends)")
    elif shape != (n,):
        problems.append(f"returned shape {shape}; a scalar task returns one number per input, shape ({n},)")
    if out.is_floating_point() and not torch.isfinite(out).all():
        problems.append("returned NaN or infinite values")
    return problems


# ------------------------------------------------------------------------------------------
# loss and training


def data_batch(model: Autoencoder, n: int, seed: int = 0) -> torch.Tensor:
    """Training images shaped like ``data_shape``, binarized when the model declares dynamic binarization."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand((n, *model.data_shape), generator=generator)
    return torch.bernoulli(images, generator=generator) if model.dynamic_binarization else images


def _loss(run: _Run) -> None:
    from zoo.training.terms import loss_term_problems

    model = run.seeded(lambda: run.cls(run.config))  # a fresh copy: backward must not touch run.model
    batch = data_batch(model, 4)
    model.train()
    terms = run.seeded(lambda: model.loss(batch, step=0))
    problems = loss_term_problems(model.architecture, terms)
    for problem in problems:
        run.fail(problem)
    if problems:
        return
    for name, value in terms.items():
        if not torch.isfinite(value.detach()).all():
            run.fail(f"term {name!r} is {float(value.detach())} on a random batch")
    run.require(bool(torch.isfinite(terms["loss"].detach()).all()), "'loss' must be finite to train")
    terms["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    run.require(bool(grads), "backward() of 'loss' reached no parameter")
    run.require(all(torch.isfinite(g).all() for g in grads), "backward() of 'loss' gave NaN or infinite gradients")
    model.eval()
    with torch.no_grad():
        terms = run.seeded(lambda: model.loss(batch))
    for problem in loss_term_problems(model.architecture, terms, requires_grad=False):
        run.fail(f"in validation (eval mode, no_grad, no step): {problem}")


def _train(run: _Run) -> None:
    from zoo.data import ImageDataset
    from zoo.training import TrainConfig, Trainer

    model = run.seeded(lambda: run.cls(run.config))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    generator = torch.Generator().manual_seed(0)

    def dataset(split: str) -> ImageDataset:
        images = torch.randint(0, 256, (8, *model.data_shape), generator=generator, dtype=torch.uint8)
        return ImageDataset(images, torch.zeros(8, dtype=torch.int64), name="conformance", split=split, checksum="-")

    config = TrainConfig(epochs=1, batch_size=4, val_batch_size=4, seed=0)
    out = run.workdir / "train"
    result = Trainer(model, dataset("train"), dataset("val"), config, out, data_name="conformance",
                     progress=False, log=lambda _line: None).fit()
    run.require(result.global_step == 2, f"two batches of 4 gave {result.global_step} optimiser steps, not 2")
    after = model.state_dict()
    run.require(any(not torch.equal(before[k], after[k]) for k in before), "two optimiser steps changed no weight")
    run.require(all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point()),
                "training made some weights NaN or infinite")
    run.require((out / "recipe.json").is_file() and (out / "model.safetensors").is_file(),
                "the run folder lacks recipe.json or model.safetensors")


# ------------------------------------------------------------------------------------------
# checkpoints


def _load(run: _Run, folder: Path) -> Autoencoder:
    """Load as ``zoo.load`` does when the plugin is installed; otherwise with the class under test."""
    from zoo.checkpoint import load_checkpoint
    from zoo.plugins import get_host

    registered = get_host().registry.architectures.get(run.cls.architecture)
    if registered is run.cls:
        import zoo

        return zoo.load(folder)
    return load_checkpoint(folder, {run.cls.architecture: run.cls})


def _checkpoint(run: _Run) -> None:
    model = run.model
    first, second, resaved = (run.workdir / name for name in ("saved-1", "saved-2", "resaved"))
    model.save_pretrained(first)
    model.save_pretrained(second)
    loaded = _load(run, first)
    run.require(type(loaded) is run.cls, f"loading gave a {type(loaded).__name__}, not a {run.cls.__name__}")
    run.require(not loaded.training, "a loaded model must be in eval mode")
    ours, theirs = model.state_dict(), loaded.state_dict()
    run.require(ours.keys() == theirs.keys(), "the loaded state_dict has other keys")
    differing = [k for k in ours if ours[k].dtype != theirs[k].dtype or not torch.equal(ours[k], theirs[k])]
    run.require(not differing, f"weights differ after loading: {', '.join(differing[:5])}")
    loaded.save_pretrained(resaved)
    for file_name in ("model.safetensors", "config.json"):
        texts = {(folder / file_name).read_bytes() for folder in (first, second, resaved)}
        if len(texts) != 1:
            run.fail(f"{file_name} is not byte-identical across saves of the same weights (a sha256 pin would "
                     "break); keep save_pretrained's output deterministic")
    run.checkpoint = first
    for task in model.tasks:
        inputs = task_input(model, task, 2)
        try:
            same = torch.equal(run_task(run, model, task, inputs), run_task(run, loaded, task, inputs))
        except Exception as exc:
            run.fail(f"task {task!r} after loading: {_raised(exc)}")
            continue
        if not same:
            run.fail(f"task {task!r} gives different outputs after save_pretrained and load")


# ------------------------------------------------------------------------------------------
# serving and evaluation


def _request(task: str, inputs: Any) -> Any:
    """A native-protocol JSON request for one item of ``inputs``."""
    from zoo_handlers.images import encode_png

    kind = TASKS[task].input
    if kind == "image":
        return {"task": task, "image": encode_png(inputs[0])}
    if kind == "latent":
        return {"task": task, "latent": inputs[0].tolist()}
    return {"task": task, "n": inputs, "seed": 0}


def _served_output(task: str, reply: dict) -> torch.Tensor:
    from zoo_handlers.images import decode_png

    if "images" in reply:
        return torch.stack([decode_png(image) for image in reply["images"]])
    if "image" in reply:
        return decode_png(reply["image"]).unsqueeze(0)
    if "vector" in reply:
        return torch.tensor([reply["vector"]], dtype=torch.float32)
    return torch.tensor([reply["scalar"]], dtype=torch.float32)


def answer_all_tasks(run: _Run, service, model: Autoencoder, where: str = "") -> None:
    """One native request per declared task through ``service``; each reply must match ``model``."""
    from zoo_handlers.protocols import Request

    for task in model.tasks:
        inputs = task_input(model, task, 2)
        prefix = f"{where}: " if where else ""
        reply = service.answer([Request(json.dumps(_request(task, inputs)).encode(), "application/json")])[0]
        if reply.status != 200:
            run.fail(f"{prefix}task {task!r} answered {reply.status}: {str(reply.body)[:300]}")
            continue
        served = _served_output(task, json.loads(reply.body))
        expected = run_task(run, model, task, inputs if TASKS[task].input == "count" else inputs[:1])
        random = TASKS[task].input != "count" and draws_randomly(run, model, task, inputs[:1])  # shape only
        tolerance = PNG_TOLERANCE if TASKS[task].output == "image" else BATCH_TOLERANCE * (1 + expected.abs().max())
        if served.shape != expected.shape or not (random or torch.allclose(served, expected.float(),
                                                                            atol=float(tolerance))):
            run.fail(f"{prefix}task {task!r} served a result that differs from the model's own "
                     f"(served shape {tuple(served.shape)}, expected {tuple(expected.shape)})")


def _handler(run: _Run) -> None:
    from zoo_handlers.options import Options
    from zoo_handlers.service import ZooService

    service = ZooService(run.model, torch.device("cpu"), Options(warmup=True), name=run.cls.architecture)
    answer_all_tasks(run, service, run.model)


def _evaluation(run: _Run) -> None:
    from zoo.data import ImageDataset
    from zoo.evaluation import evaluate, metric_sets

    model = run.model
    if not metric_sets(model):
        raise _NotApplicable("no `zoo eval` metric set applies; declare 'reconstruct' (for the default "
                             "reconstruction metrics) or register a metric set")
    images = torch.randint(0, 256, (4, *model.data_shape), generator=torch.Generator().manual_seed(0),
                           dtype=torch.uint8)
    dataset = ImageDataset(images, torch.zeros(4, dtype=torch.int64), name="conformance", split="test", checksum="-")
    result = evaluate(model, dataset, k=2, chunk=2, batch_size=2)
    bad = [name for name, value in result["metrics"].items() if not torch.isfinite(torch.tensor(value))]
    run.require(not bad, f"`zoo eval` gave non-finite values for {', '.join(bad)}")


def _package(run: _Run) -> None:
    from zoo.plugins import get_host
    from zoo.serving import PackageOptions, package
    from zoo_handlers.service import ZooService

    run.require(run.checkpoint is not None, "needs the checkpoint check to pass")
    run.require(get_host().registry.architectures.get(run.cls.architecture) is run.cls,
                f"{run.cls.architecture!r} is not registered through an installed plugin, and `zoo package` "
                "ships the plugin it finds through its entry point: install the plugin (pip install -e .)")
    mar = package(run.checkpoint, run.workdir / "store", PackageOptions(handler={"warmup": True}))
    unpacked = run.workdir / "unpacked"
    with zipfile.ZipFile(mar) as archive:
        archive.extractall(unpacked)
    service = ZooService.from_model_dir(unpacked)
    answer_all_tasks(run, service, run.model, "the unpacked .mar's handler")

