"""The kernel-TLS runner's host side and the guest init's pure parts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ci import debian, ktls_runner, uml_guest
from ci.ktls_runner import ConsoleRelay, UmlKernel


def test_arguments_after_the_double_dash_go_to_pytest() -> None:
    args, pytest_args = ktls_runner.parse_args(["--uml", "--timeout", "90", "--", "tests",
                                                "-m", "ktls", "--timeout", "5"])
    assert (args.uml, args.timeout, args.mem) == (True, 90.0, "1G")
    assert pytest_args == ["tests", "-m", "ktls", "--timeout", "5"]
    _, pytest_args = ktls_runner.parse_args(["tests", "-m", "ktls"])
    assert pytest_args == ["tests", "-m", "ktls"]


def test_no_pytest_arguments_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        ktls_runner.parse_args(["--uml", "--"])
    assert exited.value.code == 2
    assert "give the pytest arguments after --" in capsys.readouterr().err


def test_console_relay_holds_boot_noise_back(capsys: pytest.CaptureFixture[str]) -> None:
    relay = ConsoleRelay()
    relay.feed("Linux version 6.1\r\nSELinux: noise\r\numl-gu")
    relay.feed("est: Linux 6.1.176\r\n..F")
    relay.feed("..\r\n1 failed")
    relay.flush()
    assert capsys.readouterr().out == "uml-guest: Linux 6.1.176\n..F..\n1 failed\n"
    assert relay.boot_lines == ["Linux version 6.1", "SELinux: noise"]


def test_secrets_stay_on_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLYGON_API_KEY", "secret")
    monkeypatch.setenv("MASSIVE_API_KEY", "secret")
    monkeypatch.setenv("TB_SOMETHING", "kept")
    monkeypatch.setenv("PATH", "/usr/bin")
    env = ktls_runner.guest_env()
    assert "POLYGON_API_KEY" not in env and "MASSIVE_API_KEY" not in env
    assert env["TB_SOMETHING"] == "kept" and env["PATH"] == "/usr/bin"
    assert env["TB_KTLS_REQUIRED"] == "1" and env["TB_KTLS_RUNNER"] == "uml"


def test_guest_files(tmp_path: Path) -> None:
    kernel = UmlKernel(tmp_path / "linux.uml", tmp_path / "modules" / "6.1.176")
    init, status = ktls_runner.write_guest_files(tmp_path, kernel, ["tests", "-m", "ktls"], 100)
    script = init.read_text().splitlines()
    assert script[0] == f"#!{sys.executable} -u"
    assert os.access(init, os.X_OK)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["pytest_args"][-3:] == ["tests", "-m", "ktls"]
    assert config["status_file"] == str(status)
    assert config["modules_dir"] == str(kernel.modules_dir)
    assert config["cwd"] == os.getcwd() and config["timeout"] == 100
    command = ktls_runner.uml_command(kernel, init, tmp_path, "1G")
    assert command[0] == str(kernel.binary)
    assert {"rootfstype=hostfs", f"init={init}", "con0=fd:0,fd:1", f"uml_dir={tmp_path}"} <= set(
        command)


def test_paths_with_spaces_are_refused(tmp_path: Path) -> None:
    run_dir = tmp_path / "a b"
    run_dir.mkdir()
    kernel = UmlKernel(tmp_path / "linux.uml", tmp_path / "6.1.176")
    with pytest.raises(ktls_runner.CannotRun, match="white space"):
        ktls_runner.write_guest_files(run_dir, kernel, ["tests"], 100)


def test_find_uml_needs_the_binary_and_modules(tmp_path: Path) -> None:
    assert ktls_runner.find_uml(tmp_path) is None
    binary = tmp_path / "usr" / "bin" / "linux.uml"
    binary.parent.mkdir(parents=True)
    binary.write_bytes(b"")
    assert ktls_runner.find_uml(tmp_path) is None
    modules = tmp_path / "usr" / "lib" / "uml" / "modules" / "6.1.176"
    modules.mkdir(parents=True)
    (modules / "modules.dep").write_text("")
    assert ktls_runner.find_uml(tmp_path) == UmlKernel(binary, modules)


def test_a_guest_past_its_deadline_is_killed_with_its_helpers() -> None:
    # A stand-in for linux.uml: a process group whose child would outlive its parent.
    process = subprocess.Popen(
        ["sh", "-c", "sleep 60 & echo started; wait"], stdout=subprocess.PIPE,
        start_new_session=True,
    )
    relay = ConsoleRelay()
    started = time.monotonic()
    assert ktls_runner.relay_until_exit(process, relay, time.monotonic() + 1.0) is False
    assert time.monotonic() - started < 5
    ktls_runner._kill_guest(process)
    assert process.returncode is not None
    deadline = time.monotonic() + 5  # the orphaned sleep is reaped by init, soon
    while _group_exists(process.pid):
        assert time.monotonic() < deadline, "the guest's process group outlived the kill"
        time.sleep(0.02)


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_modules_come_after_their_dependencies(tmp_path: Path) -> None:
    (tmp_path / "modules.dep").write_text(
        "kernel/net/tls/tls.ko:\n"
        "kernel/crypto/chacha_generic.ko: kernel/lib/crypto/libchacha.ko\n"
        "kernel/lib/crypto/libchacha.ko:\n"
        "kernel/crypto/ghash-generic.ko: kernel/crypto/gf128mul.ko\n"
        "kernel/crypto/gf128mul.ko:\n"
    )
    order = uml_guest.module_order(tmp_path, ("kernel/crypto/chacha_generic.ko",
                                              "kernel/crypto/ghash-generic.ko",
                                              "kernel/net/tls/tls.ko",
                                              "kernel/crypto/chacha_generic.ko"))
    assert order == ["kernel/lib/crypto/libchacha.ko", "kernel/crypto/chacha_generic.ko",
                     "kernel/crypto/gf128mul.ko", "kernel/crypto/ghash-generic.ko",
                     "kernel/net/tls/tls.ko"]
    with pytest.raises(uml_guest.GuestError, match=r"ccm\.ko"):
        uml_guest.module_order(tmp_path, ("kernel/crypto/ccm.ko",))


def test_the_first_alternative_modules_dep_lists_is_loaded(tmp_path: Path) -> None:
    (tmp_path / "modules.dep").write_text(
        "kernel/crypto/chacha.ko: kernel/lib/crypto/libchacha.ko\n"
        "kernel/lib/crypto/libchacha.ko:\n"
    )
    wanted = (("kernel/crypto/chacha_generic.ko", "kernel/crypto/chacha.ko"),)
    assert uml_guest.module_order(tmp_path, wanted) == ["kernel/lib/crypto/libchacha.ko",
                                                        "kernel/crypto/chacha.ko"]
    with pytest.raises(uml_guest.GuestError, match=r"ghash-generic\.ko"):
        uml_guest.module_order(tmp_path, (("kernel/crypto/ghash-generic.ko",
                                           "kernel/lib/crypto/libgf128hash.ko"),))


def test_a_package_fetch_that_fails_is_cannot_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The packages come through ci/debian.py (tested in test_ci_debian.py); any failure
    there, a bad signature among them, makes the runner exit CANNOT_RUN, never run unchecked."""
    def refuse(*args: object, **kwargs: object) -> dict[str, Path]:
        raise debian.FetchError("InRelease signature not accepted: BAD signature")

    monkeypatch.setattr(debian, "download", refuse)
    with pytest.raises(ktls_runner.CannotRun, match="signature not accepted"):
        ktls_runner.download_packages(tmp_path)


def test_the_guest_init_refuses_to_run_outside_a_guest() -> None:
    with pytest.raises(uml_guest.GuestError, match="PID 1"):
        uml_guest.mount_own_proc()
