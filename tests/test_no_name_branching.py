"""zoo/ and handlers/ never branch on an architecture or model name: models declare what they can do."""

import ast

import pytest

import zoo
from tests.conftest import REPO


def _names() -> set[str]:
    return set(zoo.list_architectures()) | set(zoo.list_models())


def _string_constants_in_branches(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
        elif isinstance(node, ast.match_case):
            operands = [p for p in ast.walk(node.pattern) if isinstance(p, ast.Constant)]
        elif isinstance(node, ast.Dict):
            operands = [k for k in node.keys if k is not None]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") in {"startswith", "endswith"}:
            operands = node.args
        else:
            continue
        for operand in operands:
            for leaf in ast.walk(operand):
                if isinstance(leaf, ast.Constant) and isinstance(leaf.value, str):
                    yield node.lineno, leaf.value


@pytest.mark.parametrize("folder", ["zoo", "handlers"])
def test_no_branch_on_architecture_names(folder):
    names = _names()
    assert {"dense-vae", "conv-vae", "denoising-ae", "colorization-ae"} <= names
    offenders = []
    for path in sorted((REPO / folder).rglob("*.py")):
        for line, value in _string_constants_in_branches(ast.parse(path.read_text())):
            if any(value == n or value.startswith(f"{n}-") for n in names):
                offenders.append(f"{path.relative_to(REPO)}:{line}: {value!r}")
    assert not offenders


def test_the_checker_catches_a_branch():
    source = 'if arch == "conv-vae":\n    pass\nTABLE = {"dense-vae": 1}\n'
    found = [value for _, value in _string_constants_in_branches(ast.parse(source))]
    assert found == ["conv-vae", "dense-vae"]
