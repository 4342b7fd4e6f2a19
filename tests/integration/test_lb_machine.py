"""Issue 11: what lb owns on its own machine. Real lb processes, real workers (machine_worker.py),
a real websocket server on 127.0.0.1: one worker per pipe set, no stray fds or processes,
bounded shutdown, signals, output paths checked up front, the key never printed."""

from __future__ import annotations

import asyncio
import glob
import json
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time

import pytest

from harness.lb import LbProcess
from harness.wait import async_wait_for, read_json, wait_for
from tests.integration.feedgen import Feed
from tests.integration.polyserver import PolyServer

HERE = os.path.dirname(os.path.abspath(__file__))
QUIET = ["--stats-interval", "0"]


def worker(mode: str, *extra: str) -> list[str]:
    return [sys.executable, os.path.join(HERE, "machine_worker.py"), mode, *extra]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def reports(workdir: str, prefix: str = "report_") -> list[dict]:
    found = []
    for path in sorted(glob.glob(os.path.join(workdir, f"{prefix}*.json"))):
        if not path.endswith(".tmp"):
            data = read_json(path)
            if data is not None:
                found.append(data)
    return found


async def stop(lb: LbProcess, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
    try:
        return await asyncio.to_thread(lb.stop, timeout, sig)
    finally:
        lb.__exit__()


def lb_command(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("POLYGON_API_KEY", "MASSIVE_API_KEY")}
    return subprocess.run([sys.executable, "-m", "balancer", *args], capture_output=True, text=True,
                          timeout=30, env=env)


# -- item 1: a side write never decides whether a worker runs -------------------------------------

async def test_a_failing_ready_file_never_starts_a_second_worker(tmp_path):
    side = tmp_path / "side"
    side.mkdir()
    workdir = tmp_path / "work"
    workdir.mkdir()
    lb = LbProcess("ws://127.0.0.1:9/stocks", 2, str(workdir), worker("report"),
                   options=[*QUIET, "--ready-file", str(side / "ready.json")]).start(None)
    await async_wait_for(lambda: reports(str(workdir)) and lb.stats().get("worker_pid"), 20,
                         "the first worker")
    shutil.rmtree(side)  # the ready file's directory vanishes
    os.kill(lb.stats()["worker_pid"], signal.SIGKILL)
    await async_wait_for(lambda: lb.stats().get("worker_restarts") == 1, 20, "one restart")
    restarted = time.time()
    # three more seconds of lb's life (its stats snapshots are the clock): the old code
    # re-forked every 0.5-2 s after a failed write
    await async_wait_for(lambda: lb.stats().get("time", 0) > restarted + 3, 20, "3 s of snapshots")
    stats = lb.stats()
    assert stats["worker_starts"] == 2 and stats["worker_restarts"] == 1
    assert len(reports(str(workdir))) == 2
    assert "--ready-file: cannot write it" in lb.log()
    assert await stop(lb) == 0


# -- item 2 and 3: output paths and --cafile checked before any fork or connection ----------------

@pytest.mark.parametrize("option", ["--ready-file", "--stats-file", "--record"])
def test_an_output_path_in_a_missing_directory_is_exit_2_before_anything(tmp_path, option):
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        proc = lb_command(option, str(tmp_path / "gone" / "file"), "k", f"ws://127.0.0.1:{port}/s", "2",
                          str(tmp_path), *worker("report"))
        with pytest.raises(BlockingIOError):
            listener.accept()  # no connection was made
    finally:
        listener.close()
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and option in lines[0] and "directory" in lines[0], proc.stderr
    assert not reports(str(tmp_path)), "a worker was forked"


@pytest.mark.parametrize("content", ["", "not a certificate\n"])
def test_a_cafile_without_a_certificate_is_exit_2(tmp_path, content):
    cafile = tmp_path / "ca.pem"
    cafile.write_text(content)
    proc = lb_command("--cafile", str(cafile), "k", "wss://127.0.0.1:9/s", "2", str(tmp_path),
                      *worker("report"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--cafile" in lines[0] and "certificate" in lines[0], proc.stderr
    assert not reports(str(tmp_path))


# -- item 4: a TLS handshake timeout is a timeout ---------------------------------------------------

async def test_a_silent_tls_server_is_a_timeout_not_tls(tmp_path):
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    loop = asyncio.get_running_loop()
    listener.setblocking(False)
    loop.add_reader(listener.fileno(), lambda: accepted.append(listener.accept()[0]))
    try:
        lb = LbProcess(f"wss://localhost:{listener.getsockname()[1]}/stocks", 2, str(tmp_path),
                       worker("report"), options=[*QUIET, "--tls", "userspace",
                                                  "--connect-timeout", "0.5"]).start(None)
        stats = await async_wait_for(
            lambda: (s := lb.stats()).get("disconnects", {}).get("timeout", 0) >= 2 and s, 30,
            "two handshake timeouts")
        assert await stop(lb) == 0
    finally:
        loop.remove_reader(listener.fileno())
        for s in [*accepted, listener]:
            s.close()
    assert "tls" not in stats["disconnects"]
    assert "TLS handshake with localhost timed out after 0.5 s" in lb.log()
    assert "failed: \n" not in lb.log()


# -- item 5: a setsid() escapee neither reads the pipes after a re-fork nor outlives lb -----------

async def test_an_escaped_grandchild_is_killed_before_the_refork_and_at_exit(tmp_path):
    lb = LbProcess("ws://127.0.0.1:9/stocks", 2, str(tmp_path), worker("escape"),
                   options=QUIET).start(None)
    seconds = await async_wait_for(lambda: reports(str(tmp_path), "second_"), 30, "the re-forked worker")
    escapees = json.loads((tmp_path / "escapees.json").read_text())
    assert seconds[0]["holder_alive"] is False, "the escapee still held the pipes at the re-fork"
    assert "still hold the pipes" in lb.log()
    assert alive(escapees["loose"]), "an escapee without the pipes is left alone while lb runs"
    assert await stop(lb) == 0
    assert not alive(escapees["holder"]) and not alive(escapees["loose"]), "an escapee outlived lb"


# -- item 6: the worker gets 0-2 and the read ends, whatever lb inherited -------------------------

def test_inherited_fds_reach_neither_the_worker_nor_lb_pools_children(tmp_path):
    extra = open(tmp_path / "inherited.txt", "w")  # noqa: SIM115
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        fds = (extra.fileno(), listener.fileno())
        lb = LbProcess("ws://127.0.0.1:9/stocks", 3, str(tmp_path), worker("report"),
                       options=QUIET, pass_fds=fds).start()
        seen = lb.ready()
        report = wait_for(lambda: reports(str(tmp_path)), 20, "the worker's report")[0]
        assert seen["worker_pid"]
        pipe_fds = [int(a) for a in report["argv"][2:]]
        listing = set(report["fds"]) - {0, 1, 2, *pipe_fds}
        assert len(listing) <= 1, report  # the fd of the /proc/self/fd listing itself
        assert not set(fds) & set(report["fds"]) - set(pipe_fds)
        code = lb.stop()
        lb.__exit__()
        assert code == 0
        # lb-pool started with the same inherited fds: its children hold only their pipes
        r, w = os.pipe()
        pool = subprocess.Popen([sys.executable, "-m", "workers.pool", "--procs", "1", "--handler",
                                 "stats", str(r)], pass_fds=(r, *fds), stderr=subprocess.PIPE)
        try:
            def child() -> int | None:
                with open(f"/proc/{pool.pid}/task/{pool.pid}/children") as f:
                    kids = f.read().split()
                return int(kids[0]) if kids else None
            deadline = time.monotonic() + 20
            while (kid := child()) is None:
                assert time.monotonic() < deadline, "no pool child"
                time.sleep(0.02)
            kid_fds = {int(n) for n in os.listdir(f"/proc/{kid}/fd")}
            pool_fds = {int(n) for n in os.listdir(f"/proc/{pool.pid}/fd")}
            assert not kid_fds & set(fds), kid_fds
            assert not pool_fds & set(fds), pool_fds
        finally:
            os.close(w)
            pool.wait(20)
            os.close(r)
    finally:
        extra.close()
        listener.close()


# -- item 7: a usage error never echoes what could be the key -------------------------------------

SECRET = "Zq9SECRETkey0xYY"


@pytest.mark.parametrize("args", [
    ["ws://h/s", SECRET, "2", ".", "/bin/cat"],  # URL and KEY swapped
    [SECRET, "ws://h/s", SECRET, ".", "/bin/cat"],  # the key in NPIPES's place
    ["--ping-interval", SECRET, "k", "ws://h/s", "2", ".", "/bin/cat"],
    ["--max-backlog", SECRET, "k", "ws://h/s", "2", ".", "/bin/cat"],
    ["--tls", SECRET, "k", "ws://h/s", "2", ".", "/bin/cat"],
    ["k", f"wss://user:{SECRET}@h/s", "2", ".", "/bin/cat"],
    ["k", "ws://h/s", "2", SECRET, "/bin/cat"],
    ["k", "ws://h/s", "2", ".", SECRET],
    [f"--stats-interval={SECRET}", "k", "ws://h/s", "2", ".", "/bin/cat"],
])
def test_a_usage_error_never_echoes_the_key(args):
    proc = lb_command(*args)
    assert proc.returncode == 2
    assert SECRET not in proc.stderr and SECRET[3:12] not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


# -- items 10 and 11: one shutdown bound; every signal --------------------------------------------

async def test_the_shutdown_timeout_bounds_the_whole_shutdown(tmp_path):
    """A worker that ignores SIGTERM and never reads, a backlog that cannot drain."""
    feed = Feed(3)
    async with PolyServer() as server:
        lb = LbProcess(server.url(), 1, str(tmp_path), worker("deaf"),
                       options=[*QUIET, "--shutdown-timeout", "3", "--pipe-size", "64K"]).start(None)
        conn = await server.next_connection()
        for frame in feed.frames(50, 100):
            await conn.send_text(frame)
        await async_wait_for(lambda: lb.stats().get("total_backlog", 0) > 0, 20, "a backlog")
        pids = json.loads((tmp_path / "deaf.json").read_text())
        t0 = time.monotonic()
        code = await stop(lb)
        took = time.monotonic() - t0
    assert code == 0
    print(f"--shutdown-timeout 3: exit {took:.2f} s after SIGTERM")
    assert took < 3.5, f"--shutdown-timeout 3 took {took:.2f} s"
    assert not alive(pids["worker"]) and not alive(pids["child"])
    assert "ignored SIGTERM; killing it" in lb.log()


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGQUIT, signal.SIGINT])
async def test_a_stop_signal_closes_with_1001_and_leaves_no_process(tmp_path, sig):
    feed = Feed(5)
    async with PolyServer() as server:
        lb = LbProcess(server.url(), 2, str(tmp_path), worker("family"), options=QUIET).start(None)
        conn = await server.next_connection()
        await conn.send_text(feed.frame(10))
        family = await async_wait_for(lambda: read_json(str(tmp_path / "family.json")), 20, "the family")
        await async_wait_for(lambda: lb.stats().get("trades") == 10, 20, "delivery")
        lb.proc.send_signal(sig)
        close = await conn.wait_frame(0x8, 10)
        assert close.payload[:2] == struct.pack(">H", 1001)
        code = await asyncio.to_thread(lb.wait, 30)
        lb.__exit__()
    assert code == 0
    assert f"{signal.Signals(sig).name}: shutting down" in lb.log()
    assert not alive(family["worker"]) and not alive(family["child"]), "a same-group child outlived lb"
    assert lb.stats()["trades"] == 10  # the final snapshot was written


async def test_sigusr1_dumps_the_stats_and_lb_goes_on(tmp_path):
    async with PolyServer() as server:
        lb = LbProcess(server.url(), 2, str(tmp_path), worker("report"), options=QUIET).start(None)
        conn = await server.next_connection()
        await conn.send_text(Feed(1).frame(7))
        await async_wait_for(lambda: lb.stats().get("trades") == 7, 20, "delivery")
        lb.proc.send_signal(signal.SIGUSR1)
        line = await async_wait_for(
            lambda: next((x for x in lb.log().splitlines() if x.startswith("lb: SIGUSR1 stats: ")), None),
            20, "the stats dump")
        assert json.loads(line.split("stats: ", 1)[1])["trades"] == 7
        assert lb.proc.poll() is None
        assert await stop(lb) == 0


async def test_sigusr2_reopens_the_record_file(tmp_path):
    record = tmp_path / "record.jsonl"
    feed = Feed(2)
    async with PolyServer() as server:
        lb = LbProcess(server.url(), 2, str(tmp_path), worker("report"),
                       options=[*QUIET, "--record", str(record)]).start(None)
        conn = await server.next_connection()
        await conn.send_text(feed.frame(3))
        await async_wait_for(lambda: lb.stats().get("trades") == 3, 20, "delivery")
        os.rename(record, tmp_path / "record.1")
        lb.proc.send_signal(signal.SIGUSR2)
        await async_wait_for(lambda: "SIGUSR2: reopened --record" in lb.log(), 20, "the reopen")
        await conn.send_text(feed.frame(4))
        await async_wait_for(lambda: lb.stats().get("trades") == 7, 20, "delivery")
        assert await stop(lb) == 0
    assert len(record.read_text().splitlines()) == 1
    assert len(json.loads(record.read_text())) == 4


# -- item 13: everything after EXE is the worker's ------------------------------------------------

def test_a_double_dash_after_exe_reaches_the_worker(tmp_path):
    exe = tmp_path / "exe.sh"  # EXE itself, so that the -- comes right after it
    exe.write_text(f'#!/bin/sh\nexec {sys.executable} {HERE}/machine_worker.py report "$@"\n')
    exe.chmod(0o755)
    lb = LbProcess("ws://127.0.0.1:9/stocks", 2, str(tmp_path), [str(exe), "--", "x", "-v"],
                   options=QUIET).start()
    lb.ready()
    report = wait_for(lambda: reports(str(tmp_path)), 20, "the worker's report")[0]
    assert report["argv"][1:5] == ["report", "--", "x", "-v"]
    assert len(report["argv"]) == 7
    assert lb.stop() == 0
    lb.__exit__()


# -- item 14: hardening ---------------------------------------------------------------------------

def test_no_core_no_key_in_cmdline_no_keylog(tmp_path):
    key = "Kx7-cmdline-secret-42"
    env = dict(os.environ, SSLKEYLOGFILE=str(tmp_path / "keys.log"))
    lb = LbProcess("ws://127.0.0.1:9/stocks", 2, str(tmp_path), worker("report"), key=key,
                   options=QUIET, env=env)
    lb.argv = ["sh", "-c", 'ulimit -c unlimited && exec "$@"', "sh", *lb.argv]
    lb.start()
    lb.ready()
    try:
        with open(f"/proc/{lb.pid}/cmdline", "rb") as f:
            assert key.encode() not in f.read()
        with open(f"/proc/{lb.pid}/limits") as f:
            core = next(line for line in f if line.startswith("Max core file size")).split()
        assert core[4] == "0", core  # soft limit 0 in lb
        assert lb.wait_stats(lambda s: "dumpable" in s, 20, "a snapshot")["dumpable"] == 0
        report = wait_for(lambda: reports(str(tmp_path)), 20, "the worker's report")[0]
        assert report["core"][0] == -1, report  # the worker gets the limit lb found (unlimited)
        assert "SSLKEYLOGFILE" not in report["env"]
    finally:
        assert lb.stop() == 0
        lb.__exit__()
    assert "SSLKEYLOGFILE is set: ignored" in lb.log()
    assert key not in lb.log()


# -- item 15 and the units: a total bound on the backlog ------------------------------------------

async def test_the_total_backlog_bound_pauses_and_the_log_uses_binary_units(tmp_path):
    fast_file = tmp_path / "fast"
    slow = [sys.executable, os.path.join(HERE, "slow_worker.py"), "--rate", "20000",
            "--fast-file", str(fast_file)]
    feed = Feed(4)
    async with PolyServer() as server:
        lb = LbProcess(server.url(), 4, str(tmp_path), slow,
                       options=[*QUIET, "--max-backlog", "1G", "--max-backlog-total", "64K",
                                "--pipe-size", "64K"]).start(None)
        conn = await server.next_connection()
        for frame in feed.frames(40, 100):
            await conn.send_text(frame)
        stats = await async_wait_for(lambda: (s := lb.stats()).get("paused") and s, 20, "a pause")
        assert stats["backpressure_pauses"] >= 1
        fast_file.write_text("")
        await async_wait_for(lambda: lb.stats().get("trades") == 4000 and not lb.stats()["paused"],
                             30, "all delivered")
        assert await stop(lb) == 0
    log = lb.log()
    assert "(--max-backlog-total 64.0 KiB;" in log, log
    assert " MB" not in log


# -- also: a worker that closes its pipes and keeps running ---------------------------------------

async def test_a_worker_that_closes_its_pipes_is_restarted(tmp_path):
    feed = Feed(6)
    async with PolyServer() as server:
        lb = LbProcess(server.url(), 1, str(tmp_path), worker("abandon"),
                       options=[*QUIET, "--pipe-size", "64K", "--max-backlog", "64K"]).start(None)
        conn = await server.next_connection()
        await async_wait_for(lambda: (tmp_path / "abandoned.json").exists(), 20, "the pipes closed")
        for frame in feed.frames(30, 100):
            await conn.send_text(frame)
        stats = await async_wait_for(lambda: (s := lb.stats()).get("worker_restarts") == 1 and s, 40,
                                     "the restart")
        assert stats["abandoned_pipes"] == 1
        await async_wait_for(lambda: lb.stats().get("total_backlog") == 0, 20, "drained")
        assert await stop(lb) == 0
    assert "holds none of the pipes but still runs" in lb.log()
    assert reports(str(tmp_path), "second_")


# -- also: a certificate failure that persists is not a warning per attempt -----------------------

async def test_repeated_certificate_failures_log_one_warning(tmp_path):
    import trustme

    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(ctx)
    other = tmp_path / "other.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    async with PolyServer(ssl_context=ctx) as server:
        lb = LbProcess(server.url("localhost"), 2, str(tmp_path), worker("report"),
                       options=[*QUIET, "--cafile", str(other), "--tls", "userspace"]).start(None)
        stats = await async_wait_for(
            lambda: (s := lb.stats()).get("disconnects", {}).get("tls", 0) >= 3 and s, 30,
            "three refused handshakes")
        assert await stop(lb) == 0
    assert stats["cert_failures"] >= 3
    assert lb.log().count("certificate verification failed") == 1, lb.log()


def test_under_nohup_a_hangup_is_not_a_stop(tmp_path):
    lb = LbProcess("ws://127.0.0.1:9/stocks", 2, str(tmp_path), worker("report"), options=QUIET)
    lb.argv = ["sh", "-c", 'trap "" HUP && exec "$@"', "sh", *lb.argv]  # SIGHUP ignored, as nohup does
    lb.start()
    lb.ready()
    lb.proc.send_signal(signal.SIGHUP)
    lb.proc.send_signal(signal.SIGUSR1)  # handled after the SIGHUP: lb is still running then
    wait_for(lambda: "SIGUSR1 stats" in lb.log(), 20, "the stats dump")
    assert lb.proc.poll() is None and "SIGHUP" not in lb.log()
    assert lb.stop() == 0
    lb.__exit__()


def test_a_stats_file_whose_directory_vanishes_is_one_warning_and_lb_goes_on(tmp_path):
    side = tmp_path / "side"
    side.mkdir()
    lb = LbProcess("ws://127.0.0.1:9/stocks", 2, str(tmp_path), worker("report"),
                   options=[*QUIET, "--stats-file", str(side / "stats.json")]).start()
    wait_for(lambda: (side / "stats.json").exists(), 20, "the first snapshot")
    shutil.rmtree(side)
    wait_for(lambda: "--stats-file: cannot write it" in lb.log(), 20, "the warning")
    side.mkdir()
    wait_for(lambda: (side / "stats.json").exists(), 20, "snapshots again")
    assert lb.stop() == 0  # before: the stats task died silently and SIGTERM exited 1
    lb.__exit__()
    log = lb.log()
    assert log.count("--stats-file: cannot write it") == 1 and "--stats-file: written again" in log
    assert "Traceback" not in log
