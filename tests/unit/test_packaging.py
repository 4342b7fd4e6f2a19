"""What the wheel carries: the product's packages, entry points that resolve inside them."""

from __future__ import annotations

import ast
import importlib
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ("balancer", "common", "simulator", "workers", "harness")
SOURCE_ONLY = ("bench", "tests", "ci")


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_wheel_carries_the_product_and_the_harness_its_scripts_run() -> None:
    include = project()["tool"]["setuptools"]["packages"]["find"]["include"]
    assert sorted(name.rstrip("*") for name in include) == sorted(SHIPPED)


def test_the_license_is_an_spdx_expression() -> None:
    data = project()
    assert data["project"]["license"] == "MIT"
    requires = data["build-system"]["requires"]
    assert any(r.replace(" ", "").startswith("setuptools>=77") for r in requires), requires


def test_every_entry_point_is_in_a_shipped_package() -> None:
    for script, target in project()["project"]["scripts"].items():
        module, _, function = target.partition(":")
        assert module.split(".")[0] in SHIPPED, script
        assert callable(getattr(importlib.import_module(module), function)), script


def test_shipped_code_imports_nothing_that_stays_behind() -> None:
    for package in SHIPPED:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level:
                    names = [node.module or ""]
                for name in names:
                    assert name.split(".")[0] not in SOURCE_ONLY, f"{path}: imports {name}"
