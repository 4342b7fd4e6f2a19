"""The soak command, short: nothing lost within connections, memory flat, faults survived."""

import json
import subprocess
import sys


def test_short_soak(tmp_path):
    report = tmp_path / "report" / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "harness.soak", "--duration", "60", "--rate", "200k/s",
         "--drop-every", "10s", "--report", str(report.parent)],
        capture_output=True, text=True, timeout=400)
    assert report.exists(), proc.stderr[-3000:]
    r = json.loads(report.read_text())
    assert r["lost_within_connections"] == 0 and r["received_but_not_sent_whole"] == 0, proc.stderr
    assert r["trades_received"] > 5_000_000
    assert not r["verify_errors"] and r["gaps"] <= r["trades_in_cut_frames"]
    assert sum(r["faults_injected"].values()) >= 4
    assert r["worker_restarts"] == 0
    # lb's memory does not grow beyond what held queued trades (see harness/soak.py)
    assert r["rss_growth_beyond_backlog_pct"] <= 10, proc.stderr[-2000:]
    assert r["rss_growth_pct"] <= 10 + 100 * r["backlog_peak_mib"] / r["rss_start_mib"], proc.stderr[-2000:]
    assert r["ok"] and proc.returncode == 0
