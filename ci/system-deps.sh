#!/usr/bin/env bash
# The Debian packages the suite needs, installed when missing (needs root, or sudo).
# Run by `make test` and by .ci/run; it fails (never skips) when a package cannot be installed.
set -euo pipefail
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
updated=0
install() {  # PKG...: apt-get install, with one `apt-get update` retry for stale indexes
    $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -q "$@" || {
        if [ "$updated" = 0 ]; then
            $SUDO apt-get -o DPkg::Lock::Timeout=600 update -q && updated=1
        fi
        $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -q "$@"; }
}
# the native data path (balancer/_speedups.c) and its sanitizer build: gcc with libasan/libubsan
if ! command -v gcc >/dev/null || ! test -f "$(gcc -print-file-name=libasan.so)"; then
    install gcc libc6-dev
fi
# the kernel-TLS runner points Debian unstable's User-Mode Linux at its own C library
command -v patchelf >/dev/null || install patchelf
# the dashboard test runs lb-demo in a real terminal: tmux, detached, with a fixed size
command -v tmux >/dev/null || install tmux
# the JetStream tests start real nats-server processes (Debian's package, 2.9.x)
command -v nats-server >/dev/null || test -x /usr/sbin/nats-server || install nats-server
# packages from other Debian suites (the UML kernel, Debian 13's nats-server) are checked against
# Debian's signature (ci/debian.py: gpgv and the archive keyring); its test signs a mirror with gpg
command -v gpgv >/dev/null || install gpgv
command -v gpg >/dev/null || install gpg
test -f /usr/share/keyrings/debian-archive-keyring.gpg || install debian-archive-keyring
