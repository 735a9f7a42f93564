"""logs, metrics, kubeconfig loading, the CLI and the import footprint."""

from __future__ import annotations

import base64
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from refreshbus_sidecar.kubeapi import ApiError, load_kubeconfig
from refreshbus_sidecar.logs import JsonFormatter
from refreshbus_sidecar.metrics import Metrics
from refreshbus_wire.contract import mask_url


def test_passwords_in_urls_are_masked() -> None:
    text = "connect amqp://sidecar:s3cr%2Ft@rabbit:5672/%2F and amqps://u:p@h/ and http://plain/"

    assert mask_url(text) == "connect amqp://sidecar:***@rabbit:5672/%2F and amqps://u:***@h/ and http://plain/"


def test_log_lines_are_json_with_extras_and_masked_urls() -> None:
    record = logging.LogRecord("refreshbus", logging.WARNING, __file__, 1,
                               "lost amqp://u:pw@h/", None, None)
    record.event_id = "e-1"

    line = json.loads(JsonFormatter().format(record))

    assert line["level"] == "warning"
    assert line["msg"] == "lost amqp://u:***@h/"
    assert line["event_id"] == "e-1"
    assert line["ts"].endswith("Z")


def test_metrics_render_in_the_prometheus_text_format() -> None:
    metrics = Metrics()
    metrics.inc("refreshbus_sidecar_reloads_total", result="success")
    metrics.inc("refreshbus_sidecar_events_dropped_total", reason='we"ird')
    metrics.observe_reload(0.02)

    text = metrics.render()

    assert 'refreshbus_sidecar_reloads_total{result="success"} 1' in text
    assert 'refreshbus_sidecar_events_dropped_total{reason="we\\"ird"} 1' in text
    assert 'refreshbus_sidecar_reload_duration_seconds_bucket{le="0.025"} 1' in text
    assert 'refreshbus_sidecar_reload_duration_seconds_bucket{le="0.01"} 0' in text
    assert "refreshbus_sidecar_reload_duration_seconds_count 1" in text
    assert "# TYPE refreshbus_sidecar_broker_connected gauge" in text


def kubeconfig(tmp_path: Path, user: dict[str, str], cluster: dict[str, str]) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps({
        "current-context": "c",
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
        "clusters": [{"name": "k", "cluster": {"server": "https://10.0.0.1:6443", **cluster}}],
        "users": [{"name": "u", "user": user}],
    }))
    return path


def test_kubeconfig_with_relative_files(tmp_path: Path) -> None:
    creds = load_kubeconfig(kubeconfig(tmp_path, {"client-certificate": "a.crt", "client-key": "a.key"},
                                       {"certificate-authority": "ca.crt"}))

    assert creds.server == "https://10.0.0.1:6443"
    assert creds.ca_file == str(tmp_path / "ca.crt")
    assert creds.cert_file == str(tmp_path / "a.crt")
    assert creds.token is None


def test_kubeconfig_with_inline_data_and_token(tmp_path: Path) -> None:
    ca = base64.b64encode(b"-----BEGIN CERTIFICATE-----\n").decode()
    creds = load_kubeconfig(kubeconfig(tmp_path, {"token": "abc"}, {"certificate-authority-data": ca}))

    assert creds.token == "abc"
    assert creds.ca_file is not None
    assert Path(creds.ca_file).read_bytes() == b"-----BEGIN CERTIFICATE-----\n"


def test_inline_credentials_that_are_not_base64_are_a_clear_error(tmp_path: Path) -> None:
    path = kubeconfig(tmp_path, {"client-key-data": "not base64 !"}, {})

    with pytest.raises(ApiError, match="client-key-data is not valid base64"):
        load_kubeconfig(path)


def test_inline_credentials_written_to_files_are_removed_when_the_process_exits(tmp_path: Path) -> None:
    key = base64.b64encode(b"PRIVATE KEY").decode()
    path = kubeconfig(tmp_path, {"client-key-data": key}, {})
    script = ("import sys; from pathlib import Path; from refreshbus_sidecar.kubeapi import load_kubeconfig;"
              " print(load_kubeconfig(Path(sys.argv[1])).key_file)")

    proc = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True,
                          timeout=30, check=True)

    key_file = Path(proc.stdout.strip())
    assert key_file.name.startswith("refreshbus-kube-")
    assert not key_file.exists()


def test_a_yaml_kubeconfig_is_refused_with_the_conversion_command(tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_text("apiVersion: v1\nkind: Config\n")

    with pytest.raises(ApiError, match="kubectl config view --flatten -o json"):
        load_kubeconfig(path)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "refreshbus_sidecar", *args], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", **(env or {})}, timeout=30, check=False)


def test_help_lists_the_modes_and_the_environment() -> None:
    proc = run_cli("--help")

    assert proc.returncode == 0
    assert "{run,watch}" in proc.stdout
    assert "REFRESHBUS_BROKER_URLS_FILE" in proc.stdout
    assert run_cli("watch", "--help").returncode == 0


def test_a_configuration_error_exits_2_with_the_reason() -> None:
    proc = run_cli("run")

    assert proc.returncode == 2
    assert "REFRESHBUS_NAMESPACE is required" in proc.stderr


def test_bus_mode_never_imports_watchfiles_or_heavy_clients() -> None:
    code = ("import sys, refreshbus_sidecar.__main__, refreshbus_sidecar.service, refreshbus_sidecar.bus\n"
            "print(sorted(m for m in ('watchfiles', 'kubernetes', 'yaml', 'kopf', 'prometheus_client')"
            " if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert proc.stdout.strip() == "[]"


def test_liveness_fails_when_the_loop_stops_turning(monkeypatch: pytest.MonkeyPatch) -> None:
    from refreshbus_sidecar import health

    clock = [1000.0]
    monkeypatch.setattr(health.time, "monotonic", lambda: clock[0])
    state = health.State(max_age=30)
    state.tick()

    clock[0] += 29
    assert state.alive
    clock[0] += 2
    assert not state.alive
    state.tick()
    assert state.alive


def test_liveness_fails_when_the_worker_died_or_outlived_its_jobs_worst_case(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from refreshbus_sidecar import health

    clock = [1000.0]
    monkeypatch.setattr(health.time, "monotonic", lambda: clock[0])
    state = health.State(max_age=30)
    running = [True]
    state.worker_running = lambda: running[0]
    state.busy_limit, state.busy_since = 100.0, clock[0]  # a job that may take 100 s began

    for _ in range(9):  # the connection loop keeps turning while the job is slow
        clock[0] += 10
        state.tick()
        assert state.alive
    clock[0] += 10.5
    state.tick()
    assert not state.alive  # stuck: longer than its worst case
    state.busy_since = None  # it finished after all
    assert state.alive
    running[0] = False
    assert not state.alive
