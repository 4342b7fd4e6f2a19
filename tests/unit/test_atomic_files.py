"""The three atomic JSON writers (lb's stats, simulate's ledger, the workers' reports) are
one helper: the content lands whole, and a failure leaves the old file and no temporary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from common.atomicfile import write_atomically, write_json_atomic
from simulator.ledger import write_atomically as ledger_write
from workers.files import write_json_atomically

DOCUMENT = {"pid": 12, "name": "x" * 5000, "nested": {"b": [1, 2, 3], "a": None}}

WRITERS = {
    "lb": ("common.atomicfile", "write_json_atomic", "DOC"),
    "simulate": ("simulator.ledger", "write_atomically", "orjson.dumps(DOC)"),
    "workers": ("workers.files", "write_json_atomically", "DOC"),
}


def test_each_writer_writes_its_format(tmp_path: Path) -> None:
    write_json_atomic(str(tmp_path / "lb.json"), DOCUMENT)
    assert (tmp_path / "lb.json").read_text() == json.dumps(DOCUMENT, indent=1, sort_keys=True)
    ledger_write(str(tmp_path / "sim.json"), orjson.dumps(DOCUMENT))
    assert (tmp_path / "sim.json").read_bytes() == orjson.dumps(DOCUMENT)
    write_json_atomically(str(tmp_path / "w.json"), DOCUMENT)
    assert (tmp_path / "w.json").read_bytes() == orjson.dumps(DOCUMENT, option=orjson.OPT_INDENT_2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lb.json", "sim.json", "w.json"]


def test_the_file_gets_the_usual_mode(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        write_atomically(str(tmp_path / "f"), b"{}")
    finally:
        os.umask(old)
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o640


def test_replacing_keeps_readers_whole(tmp_path: Path) -> None:
    target = tmp_path / "status.json"
    for n in range(50):
        write_atomically(str(target), b"[%d]" % n)
        assert json.loads(target.read_bytes()) == [n]
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_a_failed_rename_leaves_no_temporary(tmp_path: Path, writer: str) -> None:
    target = tmp_path / "report.json"
    target.mkdir()  # os.replace of a file onto a directory fails
    (target / "keep").write_text("old")
    module, function, argument = WRITERS[writer]
    code = (f"import orjson, sys; from {module} import {function}; DOC = {DOCUMENT!r}; "
            f"{function}(sys.argv[1], {argument})")
    result = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 1 and "IsADirectoryError" in result.stderr, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
    assert (target / "keep").read_text() == "old"


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path, writer: str) -> None:
    """A full disk, made real with RLIMIT_FSIZE (EFBIG) in a child process."""
    target = tmp_path / "report.json"
    target.write_bytes(b'{"old": true}')
    module, function, argument = WRITERS[writer]
    code = ("import resource, signal, sys, orjson\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            f"from {module} import {function}\n"
            f"DOC = {DOCUMENT!r}\n"
            "hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (1000, hard))\n"
            f"{function}(sys.argv[1], {argument})\n")
    result = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 1 and "File too large" in result.stderr, result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
    assert target.read_bytes() == b'{"old": true}'
