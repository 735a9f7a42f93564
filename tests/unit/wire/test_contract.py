"""The one parser of the pod contract (refreshbus_wire.contract)."""

from __future__ import annotations

import pytest
from refreshbus_wire import contract, pods
from refreshbus_wire.contract import ContractError


@pytest.mark.parametrize(
    ("value", "expected"),
    [("true", True), ("TRUE", True), (" True ", True), ("false", False), ("False", False),
     ("", False), ("  ", False), (None, False)],
)
def test_booleans_are_true_or_false_in_any_case(value: str | None, expected: bool) -> None:
    assert contract.parse_bool(value, "x") is expected


@pytest.mark.parametrize("value", ["yes", "no", "1", "0", "on", "off", "truee", "t", "enabled"])
def test_anything_else_is_refused_with_the_annotation_named(value: str) -> None:
    expected = f"{pods.ANN_AUTO_REFRESH}: '{value}' is not \"true\" or \"false\""
    with pytest.raises(ContractError, match=expected):
        contract.parse_bool(value, pods.ANN_AUTO_REFRESH)


def test_inject_reads_the_annotation_before_the_label() -> None:
    assert contract.inject_requested({pods.ANN_INJECT: "TRUE"})
    assert contract.inject_requested({}, {pods.ANN_INJECT: "true"})
    assert not contract.inject_requested({pods.ANN_INJECT: "false"}, {pods.ANN_INJECT: "true"})
    assert not contract.inject_requested({}, {})
    with pytest.raises(ContractError, match=r"refreshbus.io/inject \(label\): 'yes'"):
        contract.inject_requested({}, {pods.ANN_INJECT: "yes"})
    # Readers that cannot refuse the pod count an invalid value as asking.
    assert contract.asks_for_injection({pods.ANN_INJECT: "yes"})
    assert not contract.asks_for_injection({pods.ANN_INJECT: "false"})


@pytest.mark.parametrize(
    ("name", "valid"),
    [("web-config", True), ("a", True), ("a.b-c", True), ("x" * 253, True), ("x" * 254, False),
     ("Bad_Name", False), ("-a", False), ("a-", False), ("", False), ("a/b", False)],
)
def test_object_names(name: str, valid: bool) -> None:
    assert contract.is_name(name) is valid


@pytest.mark.parametrize(
    ("key", "valid"),
    [("app.yaml", True), (".hidden", True), ("a..b", True), ("A_B-c.1", True), ("k" * 253, True),
     ("k" * 254, False), (".", False), ("..", False), ("..data", False), ("..x", False),
     ("a/b", False), ("", False), ("a b", False)],
)
def test_keys_follow_the_api_servers_rule(key: str, valid: bool) -> None:
    assert contract.is_key(key) is valid


def test_names_lists_are_split_and_checked() -> None:
    assert contract.parse_names(" a, b ,a,,", "x") == ("a", "b")
    with pytest.raises(ContractError, match="x: 'B' is not a valid object name"):
        contract.parse_names("a,B", "x")


@pytest.mark.parametrize(
    ("url", "problem"),
    [("http://127.0.0.1:8080/r", None), ("https://app/r", None), ("ftp://x/r", "must be an http"),
     ("localhost:8080", "must be an http"), ("http:///r", "has no host"),
     ("http://x:99999/r", "has an invalid port"), ("http://x:port/r", "has an invalid port")],
)
def test_http_urls(url: str, problem: str | None) -> None:
    found = contract.http_url_problem(url)
    assert (found is None) if problem is None else (found is not None and problem in found)


@pytest.mark.parametrize("password", ["Xq7#zW9", "Xq7/zW9", "Xq7?zW9", "1234#zW9"])
def test_a_broker_url_that_does_not_parse_is_refused_without_quoting_it(password: str) -> None:
    with pytest.raises(ContractError, match="broker URL #2 is not a valid amqp") as info:
        contract.parse_broker_urls(f"amqp://a:b@h1/, amqp://sidecar:{password}@rabbit-0:5672/%2F")
    assert "Xq7" not in str(info.value)
    assert "zW9" not in str(info.value)


def test_broker_urls_are_amqp_and_split_on_commas_blanks_and_newlines() -> None:
    assert contract.parse_broker_urls("amqp://a:b@h1/ ,\namqps://a:b@h2/\n") == (
        "amqp://a:b@h1/", "amqps://a:b@h2/")
    assert contract.parse_broker_urls(" \n") == ()
    with pytest.raises(ContractError, match="broker URL #1 must start with amqp:// or amqps://"):
        contract.parse_broker_urls("http://user:pw@h/")


def test_mask_url_hides_every_password_even_one_with_an_at_sign() -> None:
    text = "amqp://op:s3cr%40t@h:5672/%2F,amqps://u:p@ss@h2 http://plain/ amqp://u:x@h3"
    assert contract.mask_url(text) == "amqp://op:***@h:5672/%2F,amqps://u:***@h2 http://plain/ amqp://u:***@h3"


# -- rollout ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "steps"),
    [("1,25%,100%", (1, "25%", "100%")), (" 1 , 2,100% ", (1, 2, "100%")), ("100%", ("100%",)),
     ("10%,50%,100%", ("10%", "50%", "100%")), ("3,100%", (3, "100%"))],
)
def test_rollout_steps_are_counts_then_percentages(value: str, steps: tuple[object, ...]) -> None:
    assert contract.parse_rollout_steps(value) == steps


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "has an empty step"),
        ("1,,100%", "has an empty step"),
        ("0,100%", "step '0' moves no pod"),
        ("0%,100%", "step '0%' is not a percentage from 1% to 100%"),
        ("1,101%", "step '101%' is not a percentage"),
        ("one,100%", "step 'one' is neither a pod count"),
        ("1.5,100%", "step '1.5' is neither a pod count"),
        ("-1,100%", "step '-1' is neither a pod count"),
        ("2,1,100%", "steps must increase, but 1 follows 2"),
        ("1,50%,50%,100%", "steps must increase, but 50% follows 50%"),
        ("25%,2,100%", "the pod count 2 follows the percentage 25%: counts come first"),
        ("1,25%", "the last step must be 100% (every pod), not 25%"),
        ("1,5", "the last step must be 100% (every pod), not 5"),
    ],
)
def test_unusable_rollout_steps_are_refused_with_the_reason(value: str, message: str) -> None:
    with pytest.raises(ContractError) as info:
        contract.parse_rollout_steps(value)
    assert str(info.value).startswith(f"{pods.ANN_ROLLOUT}: ")
    assert message in str(info.value)


def test_spec_steps_may_mix_ints_and_strings_and_are_normalized() -> None:
    steps = contract.check_rollout_steps([1, "3", " 25% ", "100%"], "spec.rollout.steps")
    assert steps == (1, 3, "25%", "100%")
    for bad in ([], [True, "100%"], [1.0, "100%"], [None]):
        with pytest.raises(ContractError, match=r"^spec\.rollout\.steps: "):
            contract.check_rollout_steps(bad, "spec.rollout.steps")


@pytest.mark.parametrize(("value", "seconds"), [("30s", 30), ("2m", 120), ("1h", 3600), ("1m30s", 90),
                                                ("0s", 0), (" 45s ", 45), ("24h", 86400)])
def test_durations(value: str, seconds: int) -> None:
    assert contract.parse_duration(value, pods.ANN_ROLLOUT_BAKE) == seconds


@pytest.mark.parametrize(("value", "message"), [("30", "is not a duration"), ("", "is not a duration"),
                                                ("2d", "is not a duration"), ("1s1m", "is not a duration"),
                                                ("-5s", "is not a duration"), ("25h", "is longer than 24h")])
def test_bad_durations_are_refused(value: str, message: str) -> None:
    with pytest.raises(ContractError, match=f"^{pods.ANN_ROLLOUT_BAKE}: .*{message}"):
        contract.parse_duration(value, pods.ANN_ROLLOUT_BAKE)


def test_pod_options_carry_the_rollout() -> None:
    base = {pods.ANN_CONFIGMAPS: "web"}
    options = contract.parse_annotations(
        {**base, pods.ANN_ROLLOUT: "1,25%,100%", pods.ANN_ROLLOUT_BAKE: "2m"})
    assert (options.rollout, options.rollout_bake) == ((1, "25%", "100%"), 120)
    options = contract.parse_annotations({**base, pods.ANN_ROLLOUT: "100%"})
    assert (options.rollout, options.rollout_bake) == (("100%",), None)
    options = contract.parse_annotations(base)
    assert (options.rollout, options.rollout_bake) == (None, None)


@pytest.mark.parametrize(
    ("annotations", "message"),
    [
        ({pods.ANN_CONFIGMAPS: "web", pods.ANN_ROLLOUT_BAKE: "30s"},
         "refreshbus.io/rollout-bake is set without refreshbus.io/rollout"),
        ({pods.ANN_SECRETS: "tls", pods.ANN_ROLLOUT: "1,100%"},
         "refreshbus.io/rollout: only ConfigMaps are versioned"),
        ({pods.ANN_CONFIGMAPS: "web", pods.ANN_ROLLOUT: "50%,1"}, "counts come first"),
        ({pods.ANN_CONFIGMAPS: "web", pods.ANN_ROLLOUT: "1,100%", pods.ANN_ROLLOUT_BAKE: "soon"},
         "refreshbus.io/rollout-bake: 'soon' is not a duration"),
    ],
)
def test_pod_options_refuse_an_unusable_rollout(annotations: dict[str, str], message: str) -> None:
    with pytest.raises(ContractError, match=message):
        contract.parse_annotations(annotations)
