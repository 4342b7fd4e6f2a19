#!/usr/bin/env bash
# Build balancer._speedups and workers._jscut with AddressSanitizer + UndefinedBehaviorSanitizer
# into a separate directory and run their differential suites against them. Fails (never skips)
# if a build fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=build/asan
rm -rf "$OUT" && mkdir -p "$OUT/balancer" "$OUT/workers"
INC=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
SUFFIX=$("$PY" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
CFLAGS=(-shared -fPIC -O1 -g -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror
        -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined -I"$INC")
gcc "${CFLAGS[@]}" balancer/_speedups.c -o "$OUT/balancer/_speedups$SUFFIX"
gcc "${CFLAGS[@]}" workers/_jscut.c -o "$OUT/workers/_jscut$SUFFIX"
ASAN_LIB=$(gcc -print-file-name=libasan.so)
# (pytest --capture=sys below: fd 2 stays the terminal's, so a sanitizer's report is seen)
test -f "$ASAN_LIB"
export LB_SPEEDUPS="$OUT/balancer/_speedups$SUFFIX" LB_JSCUT="$OUT/workers/_jscut$SUFFIX"
export LD_PRELOAD="$ASAN_LIB" ASAN_OPTIONS=detect_leaks=0 LB_REQUIRE_NATIVE=1
"$PY" -c 'from balancer import engine; assert "asan" in engine._speedups.__file__'
"$PY" -c 'from workers import jsproto; assert jsproto.NATIVE_CUT and "asan" in jsproto._jscut.__file__'
"$PY" -m pytest -x -q -p no:cacheprovider --capture=sys tests/unit/test_lb_engine.py
# PYTHONMALLOC=malloc: each buffer is a malloc block of its own, which ASan guards (pymalloc's
# blocks are not), so a read past the end of an array('B') is caught
PYTHONMALLOC=malloc "$PY" -m pytest -x -q -p no:cacheprovider --capture=sys tests/unit/test_jscut.py \
    tests/unit/test_jetstream_proto.py
