"""lb's Prometheus exposition: names, labels, the write-time histogram, --metrics parsing."""

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from balancer import metrics
from balancer.stats import Stats, WriteTimes


def snapshot(npipes=3):
    stats = Stats()
    stats.trades, stats.bytes, stats.engine = 1234, 99_000, "native"
    stats.tls = "userspace TLSv1.3 TLS_AES_256_GCM_SHA384"
    stats.disconnects["reset"] += 2
    stats.disconnects["something_new"] += 1
    data = stats.snapshot()
    data["pipes"] = {"accepted": [10, 20, 30][:npipes], "written": [10, 15, 30][:npipes],
                     "backlog": [0, 5, 0][:npipes]}
    data["dumpable"] = 0  # added by Balancer.refresh_stats, as "pipes"
    return data


def scrape(data, times=None):
    times = times or WriteTimes()
    registry = metrics.registry_for(metrics.BalancerCollector(lambda: data, times))
    text = generate_latest(registry).decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def test_every_stats_file_key_is_exported():
    assert metrics.unexported(snapshot()) == []
    assert metrics.unexported({**snapshot(), "a_new_counter": 1}) == ["a_new_counter"]


def test_counters_gauges_and_labels():
    samples = scrape(snapshot())
    assert samples[("lb_trades_total", ())] == 1234
    assert samples[("lb_received_bytes_total", ())] == 99_000
    assert samples[("lb_disconnects_total", (("cause", "reset"),))] == 2
    assert samples[("lb_disconnects_total", (("cause", "timeout"),))] == 0  # present before it happens
    assert samples[("lb_disconnects_total", (("cause", "something_new"),))] == 1
    assert samples[("lb_pipe_backlog_bytes", (("pipe", "1"),))] == 5
    assert samples[("lb_pipe_written_bytes_total", (("pipe", "1"),))] == 15
    info = [k for k in samples if k[0] == "lb_info"]
    assert info == [("lb_info", (("cipher", "TLS_AES_256_GCM_SHA384"), ("engine", "native"),
                                 ("tls", "userspace"), ("tls_version", "TLSv1.3")))]
    assert samples[("process_resident_memory_bytes", ())] > 0
    names = {name for name, _ in samples}
    assert all(name.startswith(("lb_", "process_")) for name in names)


def test_write_histogram_is_cumulative_in_seconds():
    times = WriteTimes()
    for ns in (100, 256, 300, 300, 5_000, 1_000_000, 10**9):
        times.observe(ns)
    samples = scrape(snapshot(), times)
    bucket = {dict(labels)["le"]: v for (name, labels), v in samples.items()
              if name == "lb_pipe_write_seconds_bucket"}
    assert bucket["2.56e-07"] == 2  # 100 ns and exactly 256 ns: le is "at most"
    assert bucket["5.12e-07"] == 4
    assert bucket["8.192e-06"] == 5
    assert bucket["0.001048576"] == 6  # 1 ms is just under 2**20 ns
    assert bucket["0.016777216"] == 6
    assert bucket["+Inf"] == 7
    assert samples[("lb_pipe_write_seconds_count", ())] == 7
    assert samples[("lb_pipe_write_seconds_sum", ())] == pytest.approx(1.0010059560)


@pytest.mark.parametrize(("text", "expected"), [
    ("9100", ("127.0.0.1", 9100)),
    ("0.0.0.0:9100", ("0.0.0.0", 9100)),
    ("[::1]:9100", ("::1", 9100)),
    (":9100", ("127.0.0.1", 9100)),
])
def test_parse_listen(text, expected):
    assert metrics.parse_listen(text) == expected


@pytest.mark.parametrize("text", ["host:", "abc", "1:70000"])
def test_parse_listen_rejects(text):
    with pytest.raises(ValueError, match="--metrics"):
        metrics.parse_listen(text)
