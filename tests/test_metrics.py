"""Fleet metrics, end to end: the kiosk writes node_exporter's textfile, a real
prometheus-node-exporter serves it, a real Prometheus scrapes it, and its HTTP API answers
with the counts of what visitors went through (Debian's packages; make test installs them)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from kioskvoice.sim import Faults, Simulator
from kioskvoice.system.metrics import Metrics
from visitor import speech_input, start

pytestmark = pytest.mark.timeout(180)
NODE_EXPORTER = "prometheus-node-exporter"
PROMETHEUS = "prometheus"
REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:  # loopback only
        return response.read().decode()


def wait_http(url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            get(url)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@contextlib.contextmanager
def running(argv: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """(the textfile directory, Prometheus' base URL), with node_exporter scraped every 1 s."""
    for tool in (NODE_EXPORTER, PROMETHEUS):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (make test installs Debian's package)")
    textfile = tmp_path / "textfile"
    textfile.mkdir()
    exporter_port, prom_port = free_port(), free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: kiosks\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{exporter_port}'], "
        "labels: {kiosk: lobby}}]\n"
    )
    exporter = [
        NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{exporter_port}",
        "--collector.disable-defaults", "--collector.textfile",
        f"--collector.textfile.directory={textfile}",
    ]  # fmt: skip
    prom = [
        PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{prom_port}",
    ]  # fmt: skip
    with running(exporter), running(prom):
        base = f"http://127.0.0.1:{prom_port}"
        wait_http(f"{base}/-/ready")
        yield textfile, base


def query(base: str, promql: str) -> dict[str, float]:
    """An instant query's result as {label values joined: value}."""
    url = f"{base}/api/v1/query?query={urllib.parse.quote(promql)}"
    data = json.loads(get(url))["data"]["result"]
    hidden = ("__name__", "instance", "job")
    return {
        ",".join(v for k, v in sorted(r["metric"].items()) if k not in hidden): float(r["value"][1])
        for r in data
    }


async def test_a_real_prometheus_counts_answered_failed_and_silent_turns(
    prometheus, tmp_path: Path
) -> None:
    textfile, base = prometheus
    # Speech for 5 s, then 7 s of silence, looped from the daemon's start: a turn pressed in
    # the first stretch holds speech, one pressed in the second holds none.
    talk = speech_input(tmp_path / "talk.wav", 5.0, then_silence_s=7.0)
    async with Simulator(faults=Faults()) as sim:
        kiosk = await start(
            sim, tmp_path, talk, metrics={"textfile_dir": str(textfile), "interval_s": 1}
        )

        async def hold_at(offset_s: float) -> None:
            await asyncio.sleep(max(0.0, kiosk.started_at + offset_s - time.monotonic()))
            await kiosk.hold(1.5)

        try:
            await hold_at(0.5)  # answered
            await kiosk.until(state="idle", timeout_s=20)
            await sim.wait_for(lambda s: s.sessions[0].sent_of_type("response.done"), 10)
            sim.faults.fail_responses = True
            await hold_at(12.5)  # the reply fails: an apology
            await sim.wait_for(lambda s: len(s.sessions[0].sent_of_type("response.done")) == 2, 15)
            await kiosk.until(state="idle", timeout_s=20)
            sim.faults.fail_responses = False
            await hold_at(12.0 + 7.0)  # in the silence: not sent
            await kiosk.until(state="idle", silent_turns=1, timeout_s=20)
            written = (textfile / "kioskvoice.prom").read_text()
            deadline = time.monotonic() + 20
            while True:
                turns = await asyncio.to_thread(query, base, "kioskvoice_turns_total")
                if turns.get("lobby,silent") == 1 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            apologies = await asyncio.to_thread(query, base, "kioskvoice_apologies_total")
            up = await asyncio.to_thread(query, base, "kioskvoice_up")
            replies = await asyncio.to_thread(query, base, "kioskvoice_reply_latency_seconds_count")
            linked = await asyncio.to_thread(query, base, "kioskvoice_link_up")
        finally:
            await kiosk.stop()
    assert turns == {
        "lobby,answered": 1, "lobby,apology": 1, "lobby,dropped": 0, "lobby,silent": 1,
        "lobby,too_short": 0,
    }, written  # fmt: skip
    assert apologies["lobby,reply_failed"] == 1 and apologies["lobby,no_reply"] == 0
    assert up == {"lobby": 1} and linked == {"lobby": 1} and replies == {"lobby": 1}
    assert "sk-" not in written and "transcript" not in written


def test_the_exposition_is_what_prometheus_parses(tmp_path: Path) -> None:
    """promtool checks the text format (names, types, HELP lines, histogram buckets)."""
    if shutil.which("promtool") is None:
        pytest.skip("promtool is not installed (make test installs Debian's prometheus)")
    text = Metrics().render({"state": "idle", "link": "connected"})
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr
    names = set(re.findall(r"(?m)^# TYPE (\S+)", text))
    assert all(n.startswith("kioskvoice_") for n in names)
    counters = re.findall(r"(?m)^# TYPE (\S+) counter", text)
    assert counters and all(n.endswith("_total") for n in counters)


FLEET_RULES = REPO / "systemd" / "prometheus" / "kioskvoice-alerts.yml"
DASHBOARD = REPO / "systemd" / "grafana" / "kioskvoice-fleet.json"
# Series node_exporter itself provides, which the rules and panels may also use.
FROM_NODE_EXPORTER = {"up", "node_textfile_mtime_seconds"}
PROMQL_WORDS = {
    "sum", "by", "count", "rate", "increase", "histogram_quantile", "topk", "clamp_min", "and",
    "or", "on", "vector", "time", "le", "kiosk", "outcome", "reason", "state", "file",
    "instance", "job", "humanizePercentage", "offline", "error", "apology", "dropped", "code",
}  # fmt: skip


def exported_names() -> set[str]:
    from kioskvoice.broker.metrics import BrokerMetrics

    text = Metrics().render({"state": "idle", "link": "connected"}) + BrokerMetrics().render()
    names = set(re.findall(r"(?m)^# TYPE (\S+)", text))
    histograms = re.findall(r"(?m)^# TYPE (\S+) histogram", text)
    return names | {f"{h}_{s}" for h in histograms for s in ("bucket", "sum", "count")}


def metric_names(expr: str) -> set[str]:
    """Identifiers in a PromQL expression that are series names (not functions, keywords,
    label names or label values)."""
    expr = re.sub(r'"[^"]*"', "", expr)  # label values
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr))
    return {w for w in words if w not in PROMQL_WORDS and not w.isdigit()}


def test_the_alert_rules_pass_promtool_and_use_only_exported_series() -> None:
    if shutil.which("promtool") is None:
        pytest.skip("promtool is not installed (make test installs Debian's prometheus)")
    result = subprocess.run(
        ["promtool", "check", "rules", str(FLEET_RULES)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    known = exported_names() | FROM_NODE_EXPORTER
    exprs = re.findall(r"(?ms)^\s+expr: >?\n?(.*?)(?=^\s+for:)", FLEET_RULES.read_text())
    assert len(exprs) == 8
    for expr in exprs:
        assert metric_names(expr) <= known, (expr, metric_names(expr) - known)


def test_every_dashboard_query_uses_only_exported_series() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    known = exported_names() | FROM_NODE_EXPORTER
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 9 and dashboard["uid"] == "kioskvoice-fleet"
    for expr in exprs:
        assert metric_names(expr) <= known, (expr, metric_names(expr) - known)
    # The check can fail: a misspelt series is caught.
    assert metric_names("sum(kioskvoice_turn_total)") - known == {"kioskvoice_turn_total"}


async def test_a_real_prometheus_scrapes_the_brokers_metrics(tmp_path: Path) -> None:
    """Minted secrets, refusals by reason and the request latency, read back from
    Prometheus' HTTP API after it scraped the broker's /metrics."""
    for tool in (PROMETHEUS,):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (make test installs Debian's package)")
    import httpx

    from kioskvoice.broker import PATH
    from kioskvoice.broker.app import create_app
    from kioskvoice.broker.server import serving
    from openai_standin import OpenAIStandIn
    from test_broker import KIOSK_REQUEST, REAL_KEY, add, bearer, settings_for

    standin = OpenAIStandIn(REAL_KEY)
    async with serving(standin.app) as upstream_url:
        settings = settings_for(tmp_path, upstream_url, limits={"burst": 2})
        token = add(settings.registry, "lobby")
        async with serving(create_app(settings, REAL_KEY)) as broker_url:
            async with httpx.AsyncClient(base_url=broker_url) as client:
                for _ in range(3):  # two minted, then the burst is spent: rate limited
                    await client.post(PATH, headers=bearer(token), json=KIOSK_REQUEST)
                await client.post(PATH, headers=bearer("kvd_unknown-token-000000"), json={})
            prom_port = free_port()
            config = tmp_path / "prometheus.yml"
            config.write_text(
                "global: {scrape_interval: 1s}\n"
                "scrape_configs:\n"
                "  - job_name: broker\n"
                f"    static_configs: [{{targets: ['{broker_url.removeprefix('http://')}']}}]\n"
            )
            prom = [
                PROMETHEUS, f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ]  # fmt: skip
            with running(prom):
                base = f"http://127.0.0.1:{prom_port}"
                await asyncio.to_thread(wait_http, f"{base}/-/ready")
                deadline = time.monotonic() + 20
                while True:
                    minted = await asyncio.to_thread(
                        query, base, "kioskvoice_broker_secrets_minted_total"
                    )
                    if minted or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.5)
                refusals = await asyncio.to_thread(query, base, "kioskvoice_broker_refusals_total")
                latency = await asyncio.to_thread(
                    query, base, "kioskvoice_broker_request_duration_seconds_count"
                )
    assert minted == {"": 2}
    assert refusals["rate_limited"] == 1 and refusals["unauthorized"] == 1
    assert refusals["bad_request"] == 0
    assert latency == {"": 4}
