"""lb-pool as a real process over real pipes; the test plays lb, writing [len][trade] frames.

Handlers used by the pool's children in these tests live in this module (the children
import it through PYTHONPATH).
"""

from __future__ import annotations

import gc
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers.workers_feed import ENV, SYMBOLS, Feed, wait_for
from workers.framing import frame_all
from workers.handler import Handler, HandlerContext
from workers.progress import SharedProgress
from workers.routing import pipe_for_symbol

HERE = __name__


class Pool:
    def __init__(self, feed: Feed, args: list[str], cwd: Path) -> None:
        self.cwd = cwd
        self.status_path = cwd / "status.json"
        self.stderr_path = cwd / "stderr.txt"
        with open(self.stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "workers.pool", "--status-file", str(self.status_path),
                 *args, *map(str, feed.read_fds)],
                pass_fds=feed.read_fds, cwd=cwd, env=ENV, stderr=stderr,
                stdout=subprocess.DEVNULL,
            )

    def status(self) -> dict:
        try:
            return json.loads(self.status_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def child_pids(self, count: int) -> list[int]:
        def running() -> list[int] | None:
            children = self.status().get("children", [])
            pids = [c["pid"] for c in children if c["state"] == "running"]
            return pids if len(pids) == count else None

        return wait_for(running, 10, f"{count} running children")  # type: ignore[return-value]

    def finish(self, timeout: float = 20) -> str:
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired as timeout_error:
            self.process.kill()
            self.process.wait(5)
            log = self.stderr_path.read_text()
            raise AssertionError(f"lb-pool did not exit:\n{log}") from timeout_error
        log = self.stderr_path.read_text()
        assert code == 0, log
        return log

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)


@pytest.fixture
def pools() -> Iterator[list[Pool]]:
    started: list[Pool] = []
    yield started
    for pool in started:
        pool.kill()


def test_verify_through_the_pool_matches_the_ledger(
    feed_factory: Callable[[int], Feed], pools: list[Pool], tmp_path: Path
) -> None:
    feed = feed_factory(8)
    pool = Pool(feed, ["--procs", "3", "--handler", "verify", "--report", "report.json"],
                tmp_path)
    pools.append(pool)
    feed.close_readers()
    writer = feed.write_in_thread(30000)
    writer.join(20)
    feed.close_writers()
    pool.finish()
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["errors"] == dict.fromkeys(report["errors"], 0)
    assert report["messages"] == 30000 and report["gaps"] == 0 and report["npipes"] == 8
    ledger = feed.ledger()
    assert {s: {k: e[k] for k in ("count", "first_q", "last_q", "crc32")}
            for s, e in report["symbols"].items()} == ledger
    for symbol, entry in report["symbols"].items():
        assert entry["pipe"] == pipe_for_symbol(symbol, 8)
    assert report["accounting"]["restarts"] == 0
    children = pool.status()["children"]
    assert [c["pipes"] for c in children] == [[0, 3, 6], [1, 4, 7], [2, 5]]
    assert all(c["state"] == "finished" for c in children)


class WhoReads(Handler):
    """Writes `pid pipe payload-pipe` lines: who read which pipe, and whether the pipe index
    the pool gave matches the pipe the test wrote the payload into."""

    def __init__(self, context: HandlerContext) -> None:
        super().__init__(context)
        self.out = open(f"who-{os.getpid()}.txt", "a")  # noqa: SIM115

    def on_batch(self, pipe: int, payloads: list[bytes]) -> None:
        for payload in payloads:
            symbol = json.loads(payload)["sym"]
            self.out.write(f"{os.getpid()} {pipe} {pipe_for_symbol(symbol, self.context.npipes)}"
                           f" {','.join(map(str, self.context.pipes))}\n")

    def close(self) -> None:
        self.out.close()


def test_children_own_disjoint_round_robin_pipe_sets(
    feed_factory: Callable[[int], Feed], pools: list[Pool], tmp_path: Path
) -> None:
    feed = feed_factory(7)
    pool = Pool(feed, ["--procs", "3", "--handler", f"{HERE}:WhoReads"], tmp_path)
    pools.append(pool)
    feed.close_readers()
    feed.write(3000)
    feed.close_writers()
    pool.finish()
    readers_of: dict[int, set[int]] = defaultdict(set)
    for path in tmp_path.glob("who-*.txt"):
        for line in path.read_text().splitlines():
            pid, pipe, routed, owned = line.split()
            assert pipe == routed
            assert int(pipe) in map(int, owned.split(","))
            readers_of[int(pipe)].add(int(pid))
    assert sorted(readers_of) == list(range(7))
    assert all(len(pids) == 1 for pids in readers_of.values())
    pid_of = {pipe: next(iter(pids)) for pipe, pids in readers_of.items()}
    assert len(set(pid_of.values())) == 3 and pool.process.pid not in pid_of.values()
    for pipe in range(7):
        assert pid_of[pipe] == pid_of[pipe % 3]


class StallFirstBatch(Handler):
    """First incarnation: note its pid, then hang in on_batch (the test SIGKILLs it).
    Later ones: record every payload handled."""

    def on_batch(self, pipe: int, payloads: list[bytes]) -> None:
        marker = Path("stalled.pid")
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            while True:
                time.sleep(1)
        with open("after.txt", "ab") as out:
            out.write(b"".join(p + b"\n" for p in payloads))


def test_killed_child_restarts_at_the_next_boundary_and_the_loss_is_counted(
    feed_factory: Callable[[int], Feed], pools: list[Pool], tmp_path: Path
) -> None:
    feed = feed_factory(1)
    per_pipe = feed.make(20)[0]
    size = 4 + len(per_pipe[0])
    assert all(4 + len(p) == size for p in per_pipe)
    os.write(feed.pipes[0][1], frame_all(per_pipe))  # all waiting before the child's read
    chunk = 2 * size + size // 3  # two messages and a third of one
    pool = Pool(feed, ["--procs", "1", "--chunk", str(chunk), "--handler",
                       f"{HERE}:StallFirstBatch"], tmp_path)
    pools.append(pool)
    feed.close_readers()
    marker = tmp_path / "stalled.pid"
    pid = int(wait_for(lambda: marker.exists() and marker.read_text(), 10, "first batch"))
    os.kill(pid, signal.SIGKILL)
    def reforked() -> bool:
        children = pool.status().get("children", [])  # the file may not be written yet
        return bool(children) and children[0]["restarts"] == 1 and children[0]["state"] == "running"

    wait_for(reforked, 10, "re-fork")
    more = feed.make(10)[0]
    os.write(feed.pipes[0][1], frame_all(more))
    feed.close_writers()
    log = pool.finish()
    handled = (tmp_path / "after.txt").read_bytes().splitlines()
    assert handled == per_pipe[3:] + more
    accounting = pool.status()["accounting"]
    assert accounting["restarts"] == 1
    assert accounting["discarded_messages"] == 1
    assert accounting["discarded_bytes"] == size - size // 3
    assert accounting["unhandled_messages"] == 2
    assert accounting["uncertain_resyncs"] == 0
    assert f"dropped the {size - size // 3} unread bytes" in log
    assert "killed by SIGKILL" in log and "2 messages it had read were never handled" in log


class DieInsideRead(Handler):
    """First incarnation: after its first message, play a reader killed inside read():
    raise its pipe's in_read flag, consume `--opt take=N` bytes the counters never see,
    and SIGKILL itself. Later ones: record every payload handled."""

    def on_batch(self, pipe: int, payloads: list[bytes]) -> None:
        marker = Path("died.pid")
        if marker.exists():
            with open("after.txt", "ab") as out:
                out.write(b"".join(p + b"\n" for p in payloads))
            return
        marker.write_text(str(os.getpid()))
        progress = next(o for o in gc.get_objects() if isinstance(o, SharedProgress))
        progress[pipe].begin_read()
        os.read(self.context.options.fds[pipe], int(self.context.user_options["take"]))
        os.kill(os.getpid(), signal.SIGKILL)


def test_child_killed_inside_read_is_resynced_by_peeking(
    feed_factory: Callable[[int], Feed], pools: list[Pool], tmp_path: Path
) -> None:
    feed = feed_factory(1)
    payloads = feed.make(30)[0]
    os.write(feed.pipes[0][1], frame_all(payloads))
    take = 4 + len(payloads[1]) + 17  # message 1 and 17 bytes of message 2 vanish
    pool = Pool(feed, ["--procs", "1", "--exact", "--opt", f"take={take}", "--handler",
                       f"{HERE}:DieInsideRead"], tmp_path)
    pools.append(pool)
    feed.close_readers()
    wait_for(lambda: (tmp_path / "died.pid").exists(), 10, "the first child to die")
    feed.close_writers()
    log = pool.finish()
    assert (tmp_path / "after.txt").read_bytes().splitlines() == payloads[3:]
    accounting = pool.status()["accounting"]
    assert accounting["uncertain_resyncs"] == 1
    assert accounting["discarded_bytes"] == 4 + len(payloads[2]) - 17
    assert accounting["discarded_messages"] == 1
    assert "WARNING pipe 0 (fd" in log and "died inside read()" in log


@pytest.mark.parametrize("interval", ["0.05", "30"], ids=["snapshots", "no-snapshot"])
@pytest.mark.parametrize("mode", [["--chunk", "3001"], ["--exact"]], ids=["chunked", "exact"])
def test_kill_under_load_loses_only_what_is_counted(
    feed_factory: Callable[[int], Feed], pools: list[Pool], tmp_path: Path, mode: list[str],
    interval: str,
) -> None:
    """With --interval 30 the child dies before its first snapshot reached the pool: what it
    handled is lost from the report, and is seen as a later first_q, not as a gap."""
    feed = feed_factory(4)
    pool = Pool(feed, ["--procs", "2", *mode, "--interval", interval, "--handler",
                       "verify", "--report", "report.json"], tmp_path)
    pools.append(pool)
    feed.close_readers()
    pids = pool.child_pids(2)
    writer = feed.write_in_thread(60000, batch=200)
    wait_for(lambda: feed.total >= 20000, 20, "a third of the stream written")
    os.kill(pids[0], signal.SIGKILL)
    writer.join(30)
    assert not writer.is_alive()
    feed.close_writers()
    pool.finish()
    report = json.loads((tmp_path / "report.json").read_text())
    lost = report["accounting"]
    assert lost["restarts"] == 1
    for kind in ("framing", "not_json_object", "misrouted", "out_of_order", "duplicates"):
        assert report["errors"][kind] == 0, report["examples"]
    missing = (lost["discarded_messages"] + lost["unhandled_messages"]
               + lost["unreported_messages"])
    ledger = feed.ledger()
    # A symbol's messages lost before the first the report holds are no gap: they show as a
    # later first_q (a symbol whose every message was lost shows as absent).
    unseen = sum(
        entry["first_q"] - ledger[symbol]["first_q"] for symbol, entry in report["symbols"].items()
    ) + sum(entry["count"] for symbol, entry in ledger.items() if symbol not in report["symbols"])
    if lost["uncertain_resyncs"] == 0:
        assert report["messages"] + missing == 60000
        assert report["gaps"] + unseen == missing
    else:
        assert report["messages"] + missing <= 60000
    assert lost["discarded_messages"] <= 2  # one per pipe of the dead child
    if mode == ["--exact"] and lost["uncertain_resyncs"] == 0:
        # exact reads never take a message ahead: only the one being handled dies unhandled
        # (the partly written ones, one per pipe at most, are the discarded ones above)
        assert lost["unhandled_messages"] <= 1
    for symbol, entry in report["symbols"].items():
        assert entry["last_q"] == ledger[symbol]["last_q"]


def crash(pipe: int, payload: bytes) -> None:
    raise RuntimeError("this handler always fails")


def test_crash_loop_is_re_forked_with_growing_backoff(
    feed_factory: Callable[[int], Feed], pools: list[Pool], tmp_path: Path
) -> None:
    feed = feed_factory(1)
    feed.write(8)
    feed.close_writers()
    pool = Pool(feed, ["--procs", "1", "--exact", "--backoff-min", "0.05", "--backoff-max",
                       "0.2", "--handler", f"{HERE}:crash"], tmp_path)
    pools.append(pool)
    feed.close_readers()
    log = pool.finish()
    delays = [float(d) for d in re.findall(r"re-forking in ([0-9.]+)s", log)]
    assert delays == [0.0, 0.05, 0.1, 0.2, 0.2, 0.2, 0.2, 0.2]
    assert log.count("RuntimeError: this handler always fails") == 8
    accounting = pool.status()["accounting"]
    assert accounting["restarts"] == 8 and accounting["unhandled_messages"] == 8
    assert accounting["discarded_messages"] == 0


def unread(fd: int) -> int:
    import fcntl
    import struct
    import termios

    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]


def test_sigterm_stops_children_and_writes_the_merged_report(
    feed_factory: Callable[[int], Feed], pools: list[Pool], tmp_path: Path
) -> None:
    feed = feed_factory(5)
    pool = Pool(feed, ["--procs", "2", "--handler", "verify", "--report", "report.json"],
                tmp_path)
    pools.append(pool)
    pids = pool.child_pids(2)
    feed.write(5000)
    wait_for(lambda: not any(map(unread, feed.read_fds)), 10, "children to read everything")
    pool.process.send_signal(signal.SIGTERM)
    log = pool.finish()
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["messages"] == 5000 and report["gaps"] == 0
    assert report["symbols"].keys() == feed.ledger().keys()
    assert "SIGTERM: stopping the children" in log
    for pid in pids:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # not ours: just make sure the pid is not a zombie of ours
    assert pool.status()["done"] is True


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def test_children_die_with_the_pool(
    feed_factory: Callable[[int], Feed], pools: list[Pool], tmp_path: Path
) -> None:
    feed = feed_factory(3)
    pool = Pool(feed, ["--procs", "3", "--handler", "log"], tmp_path)
    pools.append(pool)
    pids = pool.child_pids(3)
    assert all(map(alive, pids))
    assert {os.getpgid(pid) for pid in pids} == {os.getpgid(pool.process.pid)}
    pool.process.kill()
    pool.process.wait(5)
    wait_for(lambda: not any(map(alive, pids)), 10, "children to die with the pool")


def test_stats_children_are_merged_into_one_display(
    feed_factory: Callable[[int], Feed], pools: list[Pool], tmp_path: Path
) -> None:
    feed = feed_factory(6)
    pool = Pool(feed, ["--procs", "3", "--handler", "stats", "--interval", "0.1", "--top", "5",
                       "--summary-file", "summary.json"], tmp_path)
    pools.append(pool)
    feed.close_readers()
    pool.child_pids(3)
    feed.write(6000)
    wait_for(lambda: "trades 6,000" in pool.stderr_path.read_text(), 10, "a merged stats line")
    feed.close_writers()
    log = pool.finish()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["trades"] == 6000 and summary["symbols"] == len(SYMBOLS)
    assert len(summary["top"]) == 5
    top = summary["top"][0]
    sent = [json.loads(p) for p in feed.sent[top["sym"]]]
    assert top["trades"] == len(sent)
    assert top["vwap"] == pytest.approx(sum(t["p"] * t["s"] for t in sent)
                                        / sum(t["s"] for t in sent))
    lines = [line for line in log.splitlines() if line.startswith("lb-pool stats:")]
    assert lines and all("symbols" in line for line in lines)
    assert "lb-pool summary: 6,000 trades" in log


def test_log_through_the_pool_writes_each_pipe_in_order(
    feed_factory: Callable[[int], Feed], pools: list[Pool], tmp_path: Path
) -> None:
    feed = feed_factory(4)
    pool = Pool(feed, ["--procs", "2", "--handler", "log", "--dir", "logs"], tmp_path)
    pools.append(pool)
    feed.close_readers()
    per_pipe = feed.make(4000)
    for pipe, payloads in per_pipe.items():
        os.write(feed.pipes[pipe][1], frame_all(payloads))
    feed.close_writers()
    pool.finish()
    for pipe in range(4):
        lines = (tmp_path / "logs" / f"pipe-{pipe}.jsonl").read_bytes().splitlines()
        assert lines == per_pipe[pipe]


def test_help_documents_every_option() -> None:
    result = subprocess.run([sys.executable, "-m", "workers.pool", "--help"], env=ENV,
                            capture_output=True, text=True, timeout=20, check=True)
    for option in ("--procs", "--handler", "--status-file", "--backoff-min", "--backoff-max",
                   "--healthy-after", "--shutdown-timeout", "--exact", "--chunk", "--max-message",
                   "--stats-interval", "--opt", "--top", "--summary-file", "--report", "--log-dir",
                   "--bars-dir", "--version"):
        assert option in result.stdout
    for name in ("verify", "stats", "log", "bars"):
        result = subprocess.run([sys.executable, "-m", f"workers.{name}", "--help"], env=ENV,
                                capture_output=True, text=True, timeout=20, check=True)
        assert "--exact" in result.stdout and "FD" in result.stdout


def test_bad_arguments_exit_2(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    try:
        for args, message in (
            (["--handler", "nope", str(read_end)], "unknown handler"),
            (["--handler", "no_such_module:f", str(read_end)], "cannot load handler"),
            (["999"], "fd 999 is not open"),
        ):
            result = subprocess.run([sys.executable, "-m", "workers.pool", *args], env=ENV,
                                    pass_fds=[read_end], capture_output=True, text=True,
                                    timeout=20, cwd=tmp_path)
            assert result.returncode == 2 and message in result.stderr
    finally:
        os.close(read_end)
        os.close(write_end)
