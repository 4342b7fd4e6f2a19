"""PID 1 inside the User-Mode Linux guest that runs the kernel-TLS tests.

The guest's root file system is the host's (hostfs), so this project and its Python
are right there. Before anything touches /proc the guest mounts its own procfs and
checks that it really is procfs: if that mount failed, /proc would be the HOST's,
seen through hostfs. Power-off is the reboot(2) system call, never sysrq.

Steps: mount /proc (checked), /sys, a tmpfs on /dev/shm for TMPDIR; point the kernel's
module helper at /bin/true (modules come from the UML package, loaded by hand with
finit_module); load the TLS and AEAD modules; bring up lo; run pytest with the
console as its output; write the exit status to the host-side status file; power off.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import socket
import struct
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

PROC_SUPER_MAGIC = 0x9FA0
SYSFS_MAGIC = 0x62656572
TMPFS_MAGIC = 0x01021994  # also devtmpfs
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
RB_POWER_OFF = 0x4321FEDC
SYS_FINIT_MODULE = 313  # x86_64, which is also UML's system call table here
SIOCGIFFLAGS, SIOCSIFFLAGS = 0x8913, 0x8914
IFF_UP = 0x1
GUEST_TMPDIR = "/dev/shm/tmp"

# The kernel asks for crypto algorithms by name and, with the module helper off,
# nothing loads them: so the algorithms the tls module needs are listed here too.
# Dependencies between modules come from modules.dep. A tuple names alternatives, the first
# present wins: newer kernels (7.x) folded ghash-generic, chacha_generic and poly1305_generic
# into libraries and renamed modules.
WANTED_MODULES: tuple[str | tuple[str, ...], ...] = (
    "kernel/crypto/ctr.ko",
    ("kernel/crypto/ghash-generic.ko", "kernel/lib/crypto/libgf128hash.ko"),
    "kernel/crypto/gcm.ko",
    ("kernel/crypto/chacha_generic.ko", "kernel/crypto/chacha.ko"),
    ("kernel/crypto/poly1305_generic.ko", "kernel/lib/crypto/libpoly1305.ko"),
    "kernel/crypto/chacha20poly1305.ko",
    "kernel/crypto/ccm.ko",
    "kernel/net/tls/tls.ko",
)

libc = ctypes.CDLL(None, use_errno=True)


class GuestError(Exception):
    pass


def say(message: str) -> None:
    print(f"uml-guest: {message}", flush=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        error = ctypes.get_errno()
        raise GuestError(f"{what}: {os.strerror(error)}")


def mount(source: str, target: str, fstype: str, flags: int = 0, data: str | None = None) -> None:
    _check(
        libc.mount(source.encode(), target.encode(), fstype.encode(), flags,
                   data.encode() if data else None),
        f"mount {fstype} on {target}",
    )


def filesystem_type(path: str) -> int:
    buf = ctypes.create_string_buffer(256)  # struct statfs: f_type is the first long
    _check(libc.statfs(path.encode(), buf), f"statfs {path}")
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def mount_own_proc() -> None:
    """Mount the guest's procfs and prove it is not the host's /proc through hostfs."""
    if os.getpid() != 1:
        raise GuestError("not PID 1: this must run as the guest's init")
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    if filesystem_type("/proc") != PROC_SUPER_MAGIC:
        raise GuestError("/proc is not the guest's procfs; refusing to touch it")
    if os.readlink("/proc/self") != "1":
        raise GuestError("/proc/self is not PID 1; refusing to touch /proc")


def mount_scratch() -> None:
    mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    if filesystem_type("/sys") != SYSFS_MAGIC:
        raise GuestError("/sys is not the guest's sysfs")
    # The guest's own device nodes and a guest-private scratch file system for the
    # tests' temporary files (TMPDIR). /tmp itself stays the host's: the project may
    # live there.
    if filesystem_type("/dev") != TMPFS_MAGIC:  # the kernel may have mounted it already
        mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755")
    os.makedirs("/dev/shm", exist_ok=True)
    mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    os.makedirs(GUEST_TMPDIR, exist_ok=True)
    os.chmod(GUEST_TMPDIR, 0o1777)


def disable_module_helper() -> None:
    Path("/proc/sys/kernel/modprobe").write_text("/bin/true\n")


def module_order(modules_dir: Path, wanted: tuple[str | tuple[str, ...], ...]) -> list[str]:
    """The wanted modules and their dependencies, each after what it depends on.

    An entry that is a tuple is a set of alternatives: the first one modules.dep lists.
    """
    depends: dict[str, list[str]] = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        name, _, deps = line.partition(":")
        depends[name] = deps.split()
    order: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        if name not in depends:
            raise GuestError(f"{name} is not in {modules_dir}/modules.dep")
        for dependency in depends[name]:
            visit(dependency)
        order.append(name)

    for entry in wanted:
        if isinstance(entry, tuple):
            present = [name for name in entry if name in depends]
            visit(present[0] if present else entry[0])
        else:
            visit(entry)
    return order


def load_modules(modules_dir: Path) -> list[str]:
    libc.syscall.restype = ctypes.c_long
    loaded = []
    for name in module_order(modules_dir, WANTED_MODULES):
        fd = os.open(modules_dir / name, os.O_RDONLY | os.O_CLOEXEC)
        try:
            result = libc.syscall(SYS_FINIT_MODULE, fd, b"", 0)
        finally:
            os.close(fd)
        if result != 0 and ctypes.get_errno() != 17:  # EEXIST: built in or loaded
            raise GuestError(f"finit_module {name}: {os.strerror(ctypes.get_errno())}")
        loaded.append(Path(name).stem)
    return loaded


def bring_up_loopback() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | IFF_UP))


def run_pytest(config: dict[str, Any]) -> int:
    command = [sys.executable, "-m", "pytest", *config["pytest_args"]]
    say(f"running {' '.join(command[1:])} in {config['cwd']}")
    try:
        return subprocess.run(command, cwd=config["cwd"],
                              env=dict(config["env"], TMPDIR=GUEST_TMPDIR),
                              timeout=config["timeout"]).returncode
    except subprocess.TimeoutExpired:
        say(f"pytest did not finish within {config['timeout']:g} s: stopped")
        return 124


def run(config: dict[str, Any]) -> dict[str, Any]:
    mount_own_proc()
    mount_scratch()
    disable_module_helper()
    modules_dir = Path(config["modules_dir"])
    if modules_dir.name != os.uname().release:
        raise GuestError(f"modules are for {modules_dir.name}, kernel is {os.uname().release}")
    loaded = load_modules(modules_dir)
    bring_up_loopback()
    say(f"Linux {os.uname().release}, modules: {' '.join(loaded)}")
    return {"exit": run_pytest(config), "kernel": os.uname().release}


def write_status(path: str, status: dict[str, Any]) -> None:
    temporary = f"{path}.tmp"
    with open(temporary, "w") as f:
        json.dump(status, f)
        f.flush()
        os.fsync(f.fileno())
    os.rename(temporary, path)


def power_off() -> None:
    os.sync()
    libc.reboot(RB_POWER_OFF)
    say(f"reboot(RB_POWER_OFF) failed: {os.strerror(ctypes.get_errno())}")


def main(config_path: str) -> None:
    status: dict[str, Any]
    config: dict[str, Any] = {}
    try:
        config = json.loads(Path(config_path).read_text())
        status = run(config)
    except BaseException as exc:
        traceback.print_exc()
        status = {"error": f"{type(exc).__name__}: {exc}"}
    try:
        if config.get("status_file"):
            write_status(config["status_file"], status)
    finally:
        power_off()
