#!/usr/bin/env bash
# Build balancer._speedups with AddressSanitizer + UndefinedBehaviorSanitizer into a separate
# directory and run the differential suite against it. Fails (never skips) if the build fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=build/asan
rm -rf "$OUT" && mkdir -p "$OUT/balancer"
INC=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
SUFFIX=$("$PY" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
gcc -shared -fPIC -O1 -g -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror \
    -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined \
    -I"$INC" balancer/_speedups.c -o "$OUT/balancer/_speedups$SUFFIX"
ASAN_LIB=$(gcc -print-file-name=libasan.so)
test -f "$ASAN_LIB"
LB_SPEEDUPS="$OUT/balancer/_speedups$SUFFIX" LD_PRELOAD="$ASAN_LIB" ASAN_OPTIONS=detect_leaks=0 LB_REQUIRE_NATIVE=1 \
    "$PY" -c 'from balancer import engine; assert "asan" in engine._speedups.__file__'
LB_SPEEDUPS="$OUT/balancer/_speedups$SUFFIX" LD_PRELOAD="$ASAN_LIB" ASAN_OPTIONS=detect_leaks=0 LB_REQUIRE_NATIVE=1 \
    "$PY" -m pytest -x -q -p no:cacheprovider tests/unit/test_lb_engine.py
