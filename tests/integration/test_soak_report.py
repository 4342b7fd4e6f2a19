"""lb-soak --report DIR, short: the text report, the series over time, valid PNG charts, index.html."""

from __future__ import annotations

import csv
import json
import struct
import subprocess
import sys
import zlib

from harness.report import CHARTS, COLUMNS

CAUSES = {"eof", "reset", "close", "timeout", "protocol", "badjson", "tls", "connect", "unread",
          "handshake", "status", "shutdown"}


def png_size(path) -> tuple[int, int]:
    """(width, height) of a PNG, after checking its signature and its IHDR chunk's CRC."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name}: not a PNG"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13, f"{path.name}: no IHDR chunk first"
    crc = struct.unpack(">I", data[16 + length:20 + length])[0]
    assert zlib.crc32(data[12:16 + length]) == crc, f"{path.name}: IHDR CRC mismatch"
    assert data.endswith(b"IEND\xaeB`\x82"), f"{path.name}: no IEND"
    return struct.unpack(">II", data[16:24])


def test_soak_report(tmp_path):
    out = tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, "-m", "harness.soak", "--duration", "10", "--rate", "50k/s",
         "--drop-every", "3s", "--refuse-for", "0s", "--warmup", "3", "--report", str(out)],
        capture_output=True, text=True, timeout=120)
    assert (out / "index.html").exists(), proc.stderr[-3000:]
    result = json.loads((out / "report.json").read_text())
    assert result["lost_within_connections"] == 0, proc.stderr[-3000:]
    assert "lb-soak report" in (out / "report.txt").read_text()

    for name in CHARTS:
        width, height = png_size(out / name)
        assert width >= 400 and height >= 150, (name, width, height)

    # the series behind the charts: one row per second of the run, rates that moved
    rows = list(csv.DictReader((out / "series.csv").open()))
    assert tuple(rows[0]) == COLUMNS
    assert len(rows) >= 8, rows
    rates = [float(r["lb_trades_per_s"]) for r in rows]
    assert max(rates) > 20_000  # 50k/s offered, less around the faults
    assert all(float(r["lb_rss_mib"]) > 10 for r in rows)
    assert max(float(r["sim_trades_per_s"]) for r in rows) > 20_000
    times = [float(r["t"]) for r in rows]
    assert times == sorted(times) and times[-1] - times[0] >= 6

    # the reconnect events carry lb's cause; they add up to no more than lb counted in the end
    series = json.loads((out / "series.json").read_text())
    assert series["rows"][0]["lb_trades_per_s"] == float(rows[0]["lb_trades_per_s"])
    events = series["events"]
    assert sum(result["faults_injected"].values()) >= 2
    assert len(events) >= 2 and {e["cause"] for e in events} <= CAUSES, events
    counted = result["lb_disconnects_by_cause"]
    for cause in {e["cause"] for e in events}:
        assert sum(e["count"] for e in events if e["cause"] == cause) <= counted[cause]

    page = (out / "index.html").read_text()
    assert all(f'src="{name}"' in page for name in CHARTS)
    assert "lost within connections" in page
