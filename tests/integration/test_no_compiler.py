"""A machine without a C compiler still installs and runs lb (issue 13): the extension's build
may fail, lb then says once that it runs the pure-Python engine; LB_REQUIRE_NATIVE=1 (CI) makes
the failed build an error instead."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# a Python whose import of the extension fails, as on a machine where it was never built
NO_EXTENSION = "import sys; sys.modules['balancer._speedups'] = None; "


def source_tree(tmp_path: Path) -> Path:
    """The project's sources alone (no build/, no built extension), as a fresh clone has them."""
    tree = tmp_path / "src"
    for name in ("pyproject.toml", "setup.py", "README.md"):
        tree.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tree / name)
    for package in ("balancer", "common", "simulator", "workers", "harness"):
        shutil.copytree(ROOT / package, tree / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyc"))
    return tree


def build_wheel(tmp_path: Path, require: bool) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CC": "/bin/false", "LDSHARED": "/bin/false"}
    env.pop("LB_REQUIRE_NATIVE", None)
    if require:
        env["LB_REQUIRE_NATIVE"] = "1"
    return subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path),
                           str(source_tree(tmp_path))], capture_output=True, text=True, timeout=300, env=env)


def test_the_wheel_builds_without_a_compiler_and_fails_when_native_is_required(tmp_path) -> None:
    built = build_wheel(tmp_path / "optional", require=False)
    assert built.returncode == 0, built.stdout + built.stderr
    wheels = list((tmp_path / "optional").glob("trade_balancer-*.whl"))
    assert len(wheels) == 1
    names = zipfile.ZipFile(wheels[0]).namelist()
    assert "balancer/engine.py" in names and "balancer/router.py" in names
    assert not [n for n in names if "_speedups" in n and n.endswith(".so")], names

    required = build_wheel(tmp_path / "required", require=True)
    assert required.returncode != 0
    assert not list((tmp_path / "required").glob("*.whl"))


def test_lb_without_the_extension_says_once_it_runs_the_pure_engine(tmp_path) -> None:
    lb = [sys.executable, "-c", NO_EXTENSION + "from balancer.cli import main; sys.exit(main())"]
    args = ["--connect-timeout", "1s", "key", "ws://127.0.0.1:9/stocks", "2", str(tmp_path), "/bin/cat"]
    proc = subprocess.Popen([*lb, "--engine", "auto", *args], stderr=subprocess.PIPE, text=True,
                            stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    lines: list[str] = []
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        lines.append(line)
        if "reconnecting" in line or not line:
            break
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=20)[1]
    log = "".join(lines) + rest
    assert proc.returncode == 0, log
    assert log.count("data path: python engine") == 1, log
    assert "native" not in log.replace("--engine native", ""), log

    native = subprocess.run([*lb, "--engine", "native", *args], capture_output=True, text=True, timeout=20)
    assert native.returncode == 2, native.stderr
    assert native.stderr.strip().count("\n") == 0  # one line
    assert "balancer._speedups is not built" in native.stderr
