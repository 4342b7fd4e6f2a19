"""The dashboard in a real terminal: lb-demo under tmux (fixed size), the pane captured and read;
and lb-top's plain lines on the same run's stats files, through a pipe."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid

import pytest

from harness.wait import read_json, wait_for

BIN = os.path.dirname(sys.executable)
WIDTH, HEIGHT = 120, 50


class Tmux:
    """A tmux server of our own (its own socket), so nothing else's sessions are touched."""

    def __init__(self) -> None:
        if shutil.which("tmux") is None:
            pytest.fail("tmux is not installed (.ci/run installs it)")
        self.socket = f"lb-test-{uuid.uuid4().hex[:8]}"

    # UTF-8 whatever the caller's locale (CI may have none): the dashboard draws boxes and bars
    ENV = {**os.environ, "LC_ALL": "C.UTF-8", "TERM": os.environ.get("TERM", "xterm-256color")}

    def run(self, *args: str) -> str:
        return subprocess.run(["tmux", "-u", "-L", self.socket, "-f", "/dev/null", *args], check=True,
                              capture_output=True, text=True, timeout=10, env=self.ENV).stdout

    def start(self, command: str) -> None:
        self.run("new-session", "-d", "-s", "t", "-x", str(WIDTH), "-y", str(HEIGHT), command)

    def pane(self, history: bool = False) -> str:
        return self.run("capture-pane", "-p", "-t", "t", *(("-S", "-") if history else ()))

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=10,
                       env=self.ENV)


def lb_rate(pane: str) -> int:
    """lb's trades/s as the lb panel shows it (the panel after the simulate one)."""
    lb_part = pane.split("─ lb  pid", 1)[1] if "─ lb  pid" in pane else ""
    found = re.search(r"rate\s+([\d,]+) trades/s", lb_part)
    return int(found.group(1).replace(",", "")) if found else 0


def test_demo_dashboard_in_tmux(tmp_path):
    work = tmp_path / "demo"
    tmux = Tmux()
    # the demo on the pane itself (through a pipe its stdout would not be a terminal); the
    # sleep keeps the pane, and its last screen, after the demo has ended
    command = f"{BIN}/lb-demo --duration 8 --rate 30k/s --drop-every 2s --workdir {work}; sleep 120"
    try:
        tmux.start(command)
        pane = wait_for(lambda: (p := tmux.pane()) and lb_rate(p) > 0 and "top symbols" in p
                        and "by cause: " in p
                        and "none" not in p.split("by cause: ", 1)[1].split("\n", 1)[0] and p,
                        30, "the dashboard with lb's rate, a reconnect cause, the top symbols")
        # the files it shows, read by lb-top's plain mode (not a terminal: one line per program)
        files = [str(work / name) for name in ("simulate.json", "lb.json", "pool.json")]
        svg = tmp_path / "lb-top.svg"
        plain = subprocess.run([f"{BIN}/lb-top", "--frames", "2", "--interval", "0.5", "--svg", str(svg),
                                *files],
                               capture_output=True, text=True, timeout=30)
        wait_for(lambda: "lb-demo summary" in tmux.pane(), 60, "the demo's summary")
        history = tmux.pane(history=True)
        summary = tmux.pane()
    finally:
        tmux.kill()

    # the lb panel: rate, connection and TLS, reconnects by cause, backlog per pipe, worker
    assert "─ lb  pid" in pane and "─ simulate  wss://localhost:" in pane and "─ lb-pool  stats" in pane
    assert re.search(r"connection\s+(up|DOWN \(reconnecting\))\s+TLS (userspace|ktls) TLSv1\.[23]", pane)
    cause_line = pane.split("by cause: ", 1)[1].split("\n", 1)[0]
    assert re.search(r"(eof|reset|close|protocol|badjson|timeout) [1-9]", cause_line), cause_line
    assert re.search(r"per pipe\s+[▁▂▃▄▅▆▇█]{32}", pane)  # one column per pipe of the 32
    assert len(re.findall(r"pipe +\d+ +[█·]{30} [\d.]+ MB", pane)) == 6
    assert re.search(r"worker\s+pid \d+\s+restarts 0", pane)
    # the simulator's rate and faults, the pool's top symbols
    assert re.search(r"rate\s+[\d,]+ trades/s \(target 30,000\)", pane)
    assert re.search(r"faults\s+\w", pane) and "(mode random)" in pane
    assert "top symbols" in pane and re.search(r"SPY\s+[\d,]+\s+█+", pane)
    # redrawn in place: one header in the whole history, not one per second
    assert len(re.findall(r"lb-top  \d\d:\d\d:\d\d", history)) == 1, history
    # and the demo ends with its summary, everything sent whole received
    assert "every trade sent whole was received" in summary, summary

    assert plain.returncode == 0, plain.stderr
    lines = plain.stdout.splitlines()
    assert len(lines) == 6, plain.stdout  # 3 programs x 2 frames, no escape codes
    assert "\x1b" not in plain.stdout
    assert [line.split()[1] for line in lines[:3]] == ["simulate", "lb", "lb-pool"]
    assert read_json(str(work / "pool.json"))["program"] == "lb-pool"
    # --svg: the last screen as a picture (what the README shows), with the three panels
    picture = svg.read_text()
    assert picture.lstrip().startswith("<svg") and picture.rstrip().endswith("</svg>")
    for text in ("lb-top", "simulate", "lb-pool", "trades/s", "top&#160;symbols"):
        assert text in picture, text
