"""Run a pytest selection on a kernel that has kernel TLS.

    python -m ci.ktls_runner [--uml] [--timeout SECONDS] [--mem SIZE] -- PYTEST_ARGS...

Natively when this kernel offers the tls ULP (``balancer.ktls.probe()``), otherwise
inside User-Mode Linux: the Debian package ``user-mode-linux`` (fetched once into
ci/.uml/ with ``apt-get download``) boots with the host's file system as its root, so
the same interpreter (this one) runs pytest in the same directory, on a 6.1 kernel
whose tls module is loaded. The guest's output is printed here as it runs and the
exit status is pytest's. When neither way can run, the exit status is 125 with a
one-line reason: CI must fail then, never skip.

The tests see ``TB_KTLS_REQUIRED=1``: kernel-TLS tests fail rather than skip.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ci import debian

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "ci" / ".uml"
CANNOT_RUN = 125
GUEST_MARKER = "uml-guest:"
# Passed into the guest; everything else (API keys among it) stays on the host.
PASSED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "CI", "PYTHONPATH",
              "PYTHONHASHSEED", "PYTEST_ADDOPTS", "COLUMNS", "VIRTUAL_ENV", "OPENSSL_CONF",
              "SSL_CERT_FILE", "SSL_CERT_DIR", "PY_COLORS", "NO_COLOR", "FORCE_COLOR")


class CannotRun(Exception):
    """Neither a native kTLS kernel nor User-Mode Linux is available."""


@dataclass(frozen=True)
class UmlKernel:
    binary: Path
    modules_dir: Path  # .../modules/<release>


def say(message: str) -> None:
    print(f"ktls_runner: {message}", file=sys.stderr, flush=True)


def test_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in PASSED_ENV or k.startswith("TB_")}
    env["TB_KTLS_REQUIRED"] = "1"
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    return env


def guest_env() -> dict[str, str]:
    env = dict(test_env(), PYTHONDONTWRITEBYTECODE="1", TB_KTLS_RUNNER="uml")
    # The guest's console is a terminal even when our output is not.
    env.setdefault("PY_COLORS", "1" if sys.stdout.isatty() else "0")
    return env


def run_native(pytest_args: list[str]) -> int:
    env = dict(os.environ, TB_KTLS_REQUIRED="1")
    return subprocess.run([sys.executable, "-m", "pytest", *pytest_args], env=env).returncode


# --- getting User-Mode Linux ------------------------------------------------------


def find_uml(root: Path) -> UmlKernel | None:
    binary = root / "usr" / "bin" / "linux.uml"
    releases = sorted((root / "usr" / "lib" / "uml" / "modules").glob("*/modules.dep"))
    if not binary.is_file() or not releases:
        return None
    return UmlKernel(binary, releases[-1].parent)


# Debian stable's user-mode-linux (6.1) and trixie's (6.12) panic at the first user process on
# hosts whose CPUs have AMX ("ptrace set fp regs failed, errno = 14": the guest's FP state buffer
# is smaller than the host's XSAVE area). The kernel from Debian unstable (7.x) has the fix; it is
# built against a newer glibc than stable's, so the C library comes from the same suite and the
# binary is pointed at it with patchelf. Only the UML kernel process uses that libc: the guest's
# programs run from the host's own root (hostfs).
DEBIAN_MIRROR = os.environ.get("TB_UML_MIRROR", debian.MIRROR)
DEBIAN_SUITE = os.environ.get("TB_UML_SUITE", "sid")
UML_PACKAGES = ("user-mode-linux", "libc6")


def download_packages(directory: Path) -> dict[str, Path]:
    """The kernel's and its C library's packages, checked against Debian's signature (ci/debian.py)."""
    say(f"fetching {', '.join(UML_PACKAGES)} from Debian {DEBIAN_SUITE} ({debian.architecture()})")
    try:
        return debian.download(DEBIAN_SUITE, UML_PACKAGES, directory, mirror=DEBIAN_MIRROR)
    except debian.FetchError as exc:
        raise CannotRun(str(exc)) from None


def _run(command: list[str], what: str) -> None:
    if shutil.which(command[0]) is None:
        raise CannotRun(f"{command[0]} is not installed (needed to {what})")
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise CannotRun(f"{what} failed: {done.stderr.strip()[-300:]}")


def unpack_uml(debs: dict[str, Path], unpacked: Path, final: Path) -> None:
    """Extract the kernel and its C library into ``unpacked`` and make the kernel load that
    library from where it will be once ``unpacked`` is renamed to ``final``."""
    try:
        for deb in debs.values():
            debian.unpack(deb, unpacked)
    except debian.FetchError as exc:
        raise CannotRun(str(exc)) from None
    libdirs = sorted({p.parent for p in unpacked.glob("usr/lib*/**/ld-linux*.so*")})
    if not libdirs:
        raise CannotRun("the libc6 package holds no dynamic loader")
    libdir = next((d for d in libdirs if (d / "libc.so.6").exists()), libdirs[0])
    loader = sorted(libdir.glob("ld-linux*.so*"))[0]
    binary = unpacked / "usr" / "bin" / "linux.uml"
    moved_loader = final / loader.relative_to(unpacked)
    moved_libdir = final / libdir.relative_to(unpacked)
    _run(["patchelf", "--set-interpreter", str(moved_loader), "--set-rpath", str(moved_libdir),
          str(binary)],
         "point linux.uml at its C library")


def fetch_uml(cache: Path) -> UmlKernel:
    """The system's User-Mode Linux, or the one in the cache, fetching it if need be."""
    system = find_uml(Path("/"))
    if system is not None:
        return system
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another runner may be fetching right now
        found = find_uml(cache / "root")
        if found is not None:
            return found
        say(f"fetching user-mode-linux into {cache}")
        with tempfile.TemporaryDirectory(dir=cache) as work:
            debs = download_packages(Path(work))
            unpacked = Path(work) / "root"
            unpack_uml(debs, unpacked, cache / "root")
            unpacked.rename(cache / "root")
    found = find_uml(cache / "root")
    if found is None:
        raise CannotRun(f"the user-mode-linux package has no linux.uml or modules.dep "
                        f"under {cache / 'root'}")
    return found


# --- running the guest ------------------------------------------------------------


def write_guest_files(run_dir: Path, kernel: UmlKernel, pytest_args: list[str],
                      timeout: float) -> tuple[Path, Path]:
    """(init script, status file) for one guest run."""
    for path in (sys.executable, str(run_dir), str(ROOT)):
        if any(c.isspace() for c in path):
            raise CannotRun(f"{path!r} contains white space, which a kernel command line "
                            "or #! line cannot carry")
    status = run_dir / "status.json"
    config = run_dir / "config.json"
    config.write_text(json.dumps({
        "pytest_args": ["-p", "no:cacheprovider", *pytest_args],
        "cwd": os.getcwd(),
        "env": guest_env(),
        "modules_dir": str(kernel.modules_dir),
        "status_file": str(status),
        "timeout": timeout,
    }))
    init = run_dir / "init"
    init.write_text(
        f"#!{sys.executable} -u\n"
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from ci.uml_guest import main\n"
        f"main({str(config)!r})\n"
    )
    init.chmod(0o755)
    return init, status


def uml_command(kernel: UmlKernel, init: Path, run_dir: Path, mem: str) -> list[str]:
    return [
        str(kernel.binary), f"mem={mem}", "rootfstype=hostfs", "rw", f"init={init}",
        "quiet", "con=null", "con0=fd:0,fd:1", f"uml_dir={run_dir}",
    ]


class ConsoleRelay:
    """Prints the guest's console from the first line of our guest init on.

    Lines before it (the kernel booting) are kept and shown only if the run fails.
    """

    def __init__(self) -> None:
        self.started = False
        self.boot_lines: list[str] = []
        self._partial = ""

    def feed(self, chunk: str) -> None:
        text = self._partial + chunk.replace("\r", "")
        *lines, self._partial = text.split("\n")
        for line in lines:
            self._line(line)

    def flush(self) -> None:
        if self._partial:
            self._line(self._partial)
            self._partial = ""

    def _line(self, line: str) -> None:
        if not self.started and GUEST_MARKER in line:
            self.started = True
        if self.started:
            print(line, flush=True)
        else:
            self.boot_lines.append(line)


def relay_until_exit(process: subprocess.Popen[bytes], relay: ConsoleRelay,
                     deadline: float) -> bool:
    """Relay the console until the guest powers off; False if the deadline came first."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        ready, _, _ = select.select([fd], [], [], min(remaining, 1.0))
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            relay.feed(chunk.decode(errors="replace"))
    relay.flush()
    try:
        process.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return False
    return True


def run_in_uml(kernel: UmlKernel, pytest_args: list[str], timeout: float, mem: str) -> int:
    CACHE.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=CACHE))
    # The guest stops pytest a little before we stop the guest, to report its status.
    init, status_file = write_guest_files(run_dir, kernel, pytest_args, max(10.0, timeout - 20))
    say(f"booting User-Mode Linux {kernel.modules_dir.name} (time limit {timeout:g} s)")
    process = subprocess.Popen(
        uml_command(kernel, init, run_dir, mem), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    relay = ConsoleRelay()
    try:
        finished = relay_until_exit(process, relay, time.monotonic() + timeout)
    finally:
        _kill_guest(process)
    status = _read_status(status_file)
    if status is not None and "exit" in status:
        shutil.rmtree(run_dir, ignore_errors=True)
        return int(status["exit"])
    if relay.boot_lines:
        print("\n".join(relay.boot_lines[-40:]), file=sys.stderr)
    if not finished:
        raise CannotRun(f"the User-Mode Linux guest did not finish within {timeout:g} s "
                        f"(killed; files in {run_dir})")
    reason = status["error"] if status else "it wrote no exit status"
    raise CannotRun(f"the User-Mode Linux guest failed: {reason} (files in {run_dir})")


def _kill_guest(process: subprocess.Popen[bytes]) -> None:
    """Stop the UML kernel and its helper processes (its own process group) if still up."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    if process.stdout is not None:
        process.stdout.close()


def _read_status(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


# --- command line -----------------------------------------------------------------


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    if "--" in argv:
        at = argv.index("--")
        own, pytest_args = argv[:at], argv[at + 1 :]
    else:
        own, pytest_args = [], argv
    parser = argparse.ArgumentParser(
        prog="python -m ci.ktls_runner",
        description="Run pytest on a kernel with kernel TLS (natively or in User-Mode Linux).",
        usage="%(prog)s [--uml] [--timeout SECONDS] [--mem SIZE] -- PYTEST_ARGS...",
    )
    parser.add_argument("--uml", action="store_true",
                        help="use User-Mode Linux even if this kernel has kTLS")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="kill the guest after this many seconds (default: %(default)g)")
    parser.add_argument("--mem", default="1G", help="guest memory (default: %(default)s)")
    args = parser.parse_args(own)
    if not pytest_args:
        parser.error("give the pytest arguments after --, e.g. -- tests -m ktls")
    return args, pytest_args


def main(argv: list[str] | None = None) -> int:
    args, pytest_args = parse_args(sys.argv[1:] if argv is None else argv)
    if not args.uml:
        from balancer.ktls import probe

        reason = probe()
        if reason is None:
            say("this kernel has kernel TLS: running natively")
            return run_native(pytest_args)
        say(f"this kernel cannot: {reason}; using User-Mode Linux")
    try:
        return run_in_uml(fetch_uml(CACHE), pytest_args, args.timeout, args.mem)
    except CannotRun as exc:
        say(f"cannot run the kernel-TLS tests: {exc}")
        return CANNOT_RUN


if __name__ == "__main__":
    sys.exit(main())
