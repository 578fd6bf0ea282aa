"""What ``model.loss(batch, step=...)`` must return, checked in one place.

The contract: a dict (any mapping) from term names (str) to scalar tensors (0-dim or one
element) that includes ``"loss"``, the value the trainer minimises; during training that
``"loss"`` must require grad. :func:`loss_term_problems` lists every violation without raising
(for conformance checks that report all problems at once); :func:`check_terms` raises a
:class:`TrainingError` holding them, and is what the trainer calls on every step and in
validation.
"""

from collections.abc import Mapping
from typing import Any

import torch

from zoo.training.errors import TrainingError

SCALAR_HINT = "every loss term must be a scalar (reduce it, e.g. with .mean())"


def _describe(value: Any) -> str:
    """A short description of what came back: the type, plus the shape of a tensor or the length of a sequence."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)} item(s)"
    if value is None:
        return "None"
    return f"a {type(value).__name__}"


def loss_term_problems(architecture: str, terms: Any, *, requires_grad: bool = True) -> list[str]:
    """Every way ``terms`` (what ``<architecture>.loss()`` returned) breaks the contract; ``[]`` when it is fine.

    Each string is a complete sentence naming the architecture and the term, e.g.
    ``"conv-vae.loss() returned term 'kl' with shape (64,); every loss term must be a scalar
    (reduce it, e.g. with .mean())"``. With ``requires_grad`` (training), a ``"loss"`` that
    does not require grad is a problem too; pass False for terms computed under ``torch.no_grad()``.
    """
    where = f"{architecture}.loss()"
    if not isinstance(terms, Mapping):
        return [f"{where} returned {_describe(terms)}, not a dict of named scalar terms; "
                "return e.g. {'loss': loss, 'reconstruction': reconstruction}"]
    problems = []
    for name, value in terms.items():
        if not isinstance(name, str):
            problems.append(f"{where} returned a term named {name!r} ({type(name).__name__}); "
                            "term names must be strings")
            continue
        if not isinstance(value, torch.Tensor):
            problems.append(f"{where} returned term {name!r} as {_describe(value)}, not a tensor; "
                            "every loss term must be a scalar tensor")
        elif value.numel() != 1:
            problems.append(f"{where} returned term {name!r} with shape {tuple(value.shape)}; {SCALAR_HINT}")
    if "loss" not in terms:
        got = ", ".join(repr(k) for k in terms) or "no terms at all"
        problems.append(f"{where} returned no 'loss' term (it returned {got}); "
                        "the trainer minimises terms['loss']")
    elif requires_grad and isinstance(terms["loss"], torch.Tensor) and not terms["loss"].requires_grad:
        problems.append(f"{where} returned a 'loss' that does not require grad (it was detached or computed "
                        "under torch.no_grad()), so the trainer cannot backpropagate through it")
    return problems


def check_terms(architecture: str, terms: Any, *, requires_grad: bool = True) -> list[str]:
    """The term names of a valid ``loss()`` result, in order; else a TrainingError listing every problem."""
    problems = loss_term_problems(architecture, terms, requires_grad=requires_grad)
    if len(problems) == 1:
        raise TrainingError(problems[0])
    if problems:
        raise TrainingError(f"{architecture}.loss() broke the loss-term contract in {len(problems)} ways:\n"
                            + "\n".join(f"  - {p}" for p in problems))
    return list(terms)
