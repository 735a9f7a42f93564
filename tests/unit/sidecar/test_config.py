from __future__ import annotations

from pathlib import Path

import pytest
from refreshbus_sidecar.config import ConfigError, load
from refreshbus_wire import pods as podc

BASE = {
    podc.ENV_NAMESPACE: "shop",
    podc.ENV_POD_NAME: "orders-7d9f-abcde",
    podc.ENV_CONFIGMAPS: "orders-config, shared ,orders-config",
    podc.ENV_BROKER_URLS: "amqp://sidecar:pw1@rabbit-0:5672/%2F,amqps://sidecar:pw2@rabbit-1:5671/%2F",
}


def test_minimal_environment_gives_sensible_defaults() -> None:
    settings = load(BASE)

    assert settings.configmaps == ("orders-config", "shared")
    assert settings.secrets == ()
    assert settings.workload_kind == "Pod"
    assert settings.workload_name == "orders-7d9f-abcde"
    assert settings.target_dir == Path(podc.DEFAULT_TARGET_DIR)
    assert settings.reload.type == "none"
    assert settings.health_port == podc.DEFAULT_HEALTH_PORT
    assert len(settings.broker_urls) == 2
    assert settings.secret_mode == 0o440
    assert settings.sources == (("ConfigMap", "orders-config"), ("ConfigMap", "shared"))


def test_broker_credentials_never_appear_in_the_repr() -> None:
    assert "pw1" not in repr(load(BASE))


def test_broker_urls_can_come_from_a_file(tmp_path: Path) -> None:
    urls = tmp_path / "urls"
    urls.write_text("amqp://a:b@h1/%2F\namqp://a:b@h2/%2F\n")
    env = {**BASE, podc.ENV_BROKER_URLS: "", podc.ENV_BROKER_URLS_FILE: str(urls)}

    assert load(env).broker_urls == ("amqp://a:b@h1/%2F", "amqp://a:b@h2/%2F")


def test_the_action_is_inferred_from_what_is_set() -> None:
    assert load({**BASE, podc.ENV_SIGNAL: "sighup", podc.ENV_PROCESS: "nginx"}).reload.type == "signal"
    http = load({**BASE, podc.ENV_RELOAD_URL: "http://127.0.0.1:8080/-/reload"}).reload
    assert (http.type, http.method) == ("http", "POST")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({podc.ENV_NAMESPACE: ""}, "REFRESHBUS_NAMESPACE is required"),
        ({podc.ENV_POD_NAME: "Bad_Name"}, "not a valid Kubernetes name"),
        ({podc.ENV_CONFIGMAPS: ""}, "nothing to manage"),
        ({podc.ENV_BROKER_URLS: ""}, "REFRESHBUS_BROKER_URLS"),
        ({podc.ENV_BROKER_URLS: "http://x"}, "amqp:// or amqps://"),
        ({podc.ENV_ACTION: "signal"}, "needs REFRESHBUS_PROCESS"),
        ({podc.ENV_ACTION: "http"}, "needs REFRESHBUS_RELOAD_URL"),
        ({podc.ENV_ACTION: "restart"}, "signal, http or none"),
        ({podc.ENV_SIGNAL: "SIGKILL", podc.ENV_PROCESS: "x"}, "must be one of"),
        ({podc.ENV_PROCESS: "(", podc.ENV_ACTION: "signal"}, "not a valid regular expression"),
        ({podc.ENV_WORKLOAD_KIND: "CronJob"}, "must be one of"),
        ({podc.ENV_SECRET_MODE: "999"}, "octal file mode"),
        ({podc.ENV_FETCH_JITTER: "-1"}, "within"),
        ({podc.ENV_BROKER_URLS_FILE: "/nonexistent/urls"}, "cannot read"),
        ({podc.ENV_RELOAD_URL: "http://app:reload/-/reload"}, "RELOAD_URL has an invalid port"),
        ({podc.ENV_HEALTH_URL: "http://app:99999/healthz"}, "HEALTH_URL has an invalid port"),
        ({podc.ENV_RELOAD_URL: "http:///-/reload"}, "REFRESHBUS_RELOAD_URL has no host"),
    ],
)
def test_bad_settings_are_rejected_with_the_variable_named(change: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load({**BASE, **change})


def test_watch_mode_needs_neither_identity_nor_broker() -> None:
    settings = load({podc.ENV_WATCH_DIRS: "/etc/app"}, watch_mode=True)

    assert settings.watch_dirs == (Path("/etc/app"),)
    assert settings.broker_urls == ()


def test_inplace_files_name_keys_of_managed_sources() -> None:
    env = {**BASE, podc.ENV_SECRETS: "db", podc.ENV_INPLACE_FILES: "configmap-shared/app.yaml, secret-db/pw"}

    assert load(env).inplace_files == (("ConfigMap", "shared", "app.yaml"), ("Secret", "db", "pw"))
    assert podc.inplace_path("ConfigMap", "shared", "app.yaml") == ".inplace/configmap-shared/app.yaml"


@pytest.mark.parametrize("entry", ["configmap-other/app.yaml", "configmap-shared", "configmap-shared/../x",
                                   "configmap-shared/a/b", "secret-shared/app.yaml"])
def test_inplace_files_outside_the_managed_sources_are_refused(entry: str) -> None:
    with pytest.raises(ConfigError, match=podc.ENV_INPLACE_FILES):
        load({**BASE, podc.ENV_INPLACE_FILES: entry})


@pytest.mark.parametrize("password", ["Xq7#zW9", "Xq7/zW9", "Xq7?zW9", "1234#zW9"])
def test_a_broker_url_that_does_not_parse_is_refused_without_quoting_the_password(password: str) -> None:
    # Unencoded, these made pika raise "Port could not be cast to integer value as 'Xq7'"
    # from the main loop: a crash, with part of the password in the traceback.
    with pytest.raises(ConfigError, match="not a valid amqp") as info:
        load({**BASE, podc.ENV_BROKER_URLS: f"amqp://sidecar:{password}@rabbit-0:5672/%2F"})
    assert "Xq7" not in str(info.value)
    assert "zW9" not in str(info.value)
