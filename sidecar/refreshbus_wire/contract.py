"""The one parser of the pod contract: what a pod's ``refreshbus.io/*`` annotations mean,
which booleans, object names, keys and URLs are valid, and how broker URLs are checked
and masked.

Every reader uses these functions -- the injection webhook, auto-refresh, target
resolution and the sidecar-RBAC reconciler in the operator, the sidecar's settings, the
wire codec -- so a pod the webhook admits means the same thing to each of them.

Rules (docs/injection.md has the user-facing version):

* A boolean (``refreshbus.io/inject``, ``refreshbus.io/auto-refresh``) is ``true`` or
  ``false``, case-insensitive, surrounding blanks ignored; absent or empty means false.
  Anything else (``yes``, ``1``, ``on``...) is an error: the webhook refuses the pod with
  the message. Readers that cannot refuse count an invalid ``inject`` as asking for the
  sidecar (:func:`asks_for_injection`: such a pod without it is reported as such) and an
  invalid ``auto-refresh`` as off (:func:`parse_annotations` fails: the pod never ran
  with it).
* Rollout steps (``refreshbus.io/rollout``, and a ConfigRefresh's ``spec.rollout.steps``) are
  pod counts, then percentages of the targets, each list strictly increasing, the last
  ``100%``; a bake time (``refreshbus.io/rollout-bake``) is a duration such as ``30s``,
  ``2m``, ``1h`` or ``1m30s``.
* ConfigMap/Secret names are DNS-1123 subdomains; keys are what the API server accepts
  as a data key (``[-._a-zA-Z0-9]``, 1-253 characters, not ``.``/``..``, no ``..``
  prefix), which also makes every key a safe file name.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias

from refreshbus_wire import pods

#: Signals a pod may ask to be reloaded with (annotation, sidecar setting, event action).
SIGNALS: Final = frozenset(
    {"SIGHUP", "SIGUSR1", "SIGUSR2", "SIGINT", "SIGTERM", "SIGQUIT", "SIGWINCH", "SIGCONT"}
)
#: Methods of a reload URL call.
HTTP_METHODS: Final = frozenset({"GET", "POST", "PUT"})
#: Longest bake a rollout step may ask for: a slip ("30h" for "30s") must not hold a
#: rollout for days.
MAX_BAKE_SECONDS: Final = 24 * 3600

#: One rollout step: a pod count (``1``) or a percentage of the targets (``"25%"``), as
#: ``spec.rollout.steps`` holds it.
RolloutStep: TypeAlias = int | str


class ContractError(ValueError):
    """A value of the pod contract is unusable; the text says which and why (it never
    quotes a broker URL)."""


_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_KEY_RE = re.compile(r"^[-._a-zA-Z0-9]{1,253}$")
_STEP_RE = re.compile(r"^(\d{1,9})(%?)$")
_DURATION_RE = re.compile(r"^(?:(\d{1,6})h)?(?:(\d{1,6})m)?(?:(\d{1,6})s)?$")
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^/\s]*)@", re.I)


def parse_bool(value: str | None, what: str) -> bool:
    """``true``/``false`` (any case, blanks ignored); absent or empty is false.

    Raises:
        ContractError: any other value (``what`` names the annotation or label).
    """
    text = (value or "").strip().lower()
    if text in {"", "false"}:
        return False
    if text == "true":
        return True
    raise ContractError(f'{what}: {value!r} is not "true" or "false"')


def is_name(value: str) -> bool:
    """A valid ConfigMap/Secret/namespace/pod name (DNS-1123 subdomain)."""
    return _NAME_RE.match(value) is not None


def is_key(value: str) -> bool:
    """A valid ConfigMap/Secret data key, as the API server checks it (and so a safe file
    name: never ``.``, ``..`` or anything starting with ``..``)."""
    return _KEY_RE.match(value) is not None and value != "." and not value.startswith("..")


def parse_names(value: str | None, what: str) -> tuple[str, ...]:
    """A comma-separated list of object names (blanks dropped, order kept, no duplicates).

    Raises:
        ContractError: one of them is not a valid name.
    """
    names = pods.split_names(value)
    for name in names:
        if not is_name(name):
            raise ContractError(f"{what}: {name!r} is not a valid object name")
    return names


def http_url_problem(value: str) -> str | None:
    """Why ``value`` is not a usable http(s) URL with a host, or None when it is."""
    try:
        parts = urllib.parse.urlsplit(value)
        _ = parts.port  # raises on a port that is not a number in 0..65535
    except ValueError:
        return "has an invalid port"
    if parts.scheme not in {"http", "https"}:
        return "must be an http:// or https:// URL"
    if not parts.hostname:
        return "has no host"
    return None


# -- rollout ------------------------------------------------------------------------


def check_rollout_steps(steps: Sequence[object], what: str) -> tuple[RolloutStep, ...]:
    """Rollout steps as ``spec.rollout.steps`` holds them (``1``, ``"25%"``; a count may also
    come as the string ``"3"``), normalized to ints and ``"N%"`` strings.

    A count after a percentage is refused rather than guessed: whether 5 pods come before
    or after 10 % depends on how many pods there are.

    Raises:
        ContractError: empty, a step that is neither a count >= 1 nor 1%..100%, not
            increasing, or the last step is not 100%.
    """
    normalized: list[RolloutStep] = []
    for step in steps:
        text = str(step).strip() if isinstance(step, (int, str)) and not isinstance(step, bool) else ""
        match = _STEP_RE.match(text)
        if match is None:
            raise ContractError(
                f"{what}: step {step!r} is neither a pod count (e.g. 1) nor a percentage (e.g. 25%)")
        value, percent = int(match[1]), bool(match[2])
        if percent and not 1 <= value <= 100:
            raise ContractError(f"{what}: step {text!r} is not a percentage from 1% to 100%")
        if not percent and value < 1:
            raise ContractError(f"{what}: step {text!r} moves no pod; a count is at least 1")
        if normalized:
            last = normalized[-1]
            if isinstance(last, str) and not percent:
                raise ContractError(
                    f"{what}: the pod count {value} follows the percentage {last}: counts come first "
                    "(whether N pods is more or less than a percentage depends on the number of pods)")
            before = int(last.rstrip("%")) if isinstance(last, str) else last
            if (isinstance(last, str)) == percent and value <= before:
                raise ContractError(f"{what}: steps must increase, but {text} follows {last}")
        normalized.append(f"{value}%" if percent else value)
    if not normalized:
        raise ContractError(f"{what}: no step; write e.g. \"1,25%,100%\"")
    if normalized[-1] != "100%":
        raise ContractError(
            f"{what}: the last step must be 100% (every pod), not {normalized[-1]}; e.g. \"1,25%,100%\"")
    return tuple(normalized)


def parse_rollout_steps(value: str, what: str = pods.ANN_ROLLOUT) -> tuple[RolloutStep, ...]:
    """``"1,25%,100%"`` -> ``(1, "25%", "100%")`` (see :func:`check_rollout_steps`).

    Raises:
        ContractError: an empty step (``"1,,100%"``) or the steps are unusable.
    """
    parts = [part.strip() for part in value.split(",")]
    if any(not part for part in parts):
        raise ContractError(f"{what}: {value!r} has an empty step; write e.g. \"1,25%,100%\"")
    return check_rollout_steps(parts, what)


def parse_duration(value: str, what: str) -> int:
    """``"30s"``, ``"2m"``, ``"1h"``, ``"1m30s"`` -> seconds (at most :data:`MAX_BAKE_SECONDS`).

    Raises:
        ContractError: no unit (``"30"``), an unknown unit, or longer than a day.
    """
    text = value.strip()
    match = _DURATION_RE.match(text)
    if not text or match is None:
        raise ContractError(f"{what}: {value!r} is not a duration; write e.g. \"30s\", \"2m\" or \"1m30s\"")
    hours, minutes, seconds = (int(part or 0) for part in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total > MAX_BAKE_SECONDS:
        raise ContractError(f"{what}: {value!r} is longer than {MAX_BAKE_SECONDS // 3600}h")
    return total


# -- broker URLs ----------------------------------------------------------------------


def mask_url(text: str) -> str:
    """Replace the password of every ``scheme://user:password@host`` in ``text`` with ``***``."""
    return _URL_PASSWORD.sub(r"\g<scheme>\g<user>:***@", text)


def check_broker_url(number: int, url: str) -> None:
    """Refuse a broker URL that is not ``amqp[s]://...`` or does not parse (typically a
    password with an unencoded ``/``, ``#``, ``?`` or ``@``), without echoing it: the
    parser's own message would quote part of the password, and pika would carry it into
    tracebacks, statuses, Events and logs.

    Raises:
        ContractError: the URL is unusable; the message names it by its position only.
    """
    if not url.startswith(("amqp://", "amqps://")):
        raise ContractError(f"broker URL #{number} must start with amqp:// or amqps://")
    try:
        parts = urllib.parse.urlsplit(url)
        _ = parts.port  # ValueError when "host:port" is really part of the credentials
        valid = bool(parts.hostname) and "#" not in url
    except ValueError:
        valid = False
    if not valid:
        raise ContractError(
            f"broker URL #{number} is not a valid amqp[s]://user:password@host:port/vhost URL "
            "(percent-encode any / # ? @ : % in the user name and password)")


def parse_broker_urls(text: str) -> tuple[str, ...]:
    """The broker URLs of a Secret value or variable: separated by commas, blanks or
    newlines, each checked with :func:`check_broker_url`."""
    urls = tuple(u for u in re.split(r"[\s,]+", text) if u)
    for number, url in enumerate(urls, 1):
        check_broker_url(number, url)
    return urls


# -- the annotations of a pod ---------------------------------------------------------


def inject_requested(annotations: Mapping[str, str], labels: Mapping[str, str] | None = None) -> bool:
    """The pod asks for the sidecar: ``refreshbus.io/inject`` annotation, else the label
    of the same name (which lets a webhook ``objectSelector`` narrow the calls).

    Raises:
        ContractError: the value is not a boolean.
    """
    annotation = (annotations.get(pods.ANN_INJECT) or "").strip()
    if annotation:
        return parse_bool(annotation, pods.ANN_INJECT)
    return parse_bool((labels or {}).get(pods.ANN_INJECT), f"{pods.ANN_INJECT} (label)")


def asks_for_injection(annotations: Mapping[str, str], labels: Mapping[str, str] | None = None) -> bool:
    """The pod asks for the sidecar, validly or not: :func:`inject_requested` is true or
    raises. Readers that cannot refuse a pod count such a pod as opted in, so one that
    runs without its sidecar is reported, never silently ignored."""
    try:
        return inject_requested(annotations, labels)
    except ContractError:
        return True


@dataclass(frozen=True, slots=True)
class PodOptions:
    """The validated ``refreshbus.io/*`` annotations of one pod (or pod template)."""

    configmaps: tuple[str, ...]
    secrets: tuple[str, ...]
    action: str  # signal | http | none
    signal: str | None = None
    process: str | None = None
    reload_url: str | None = None
    reload_method: str | None = None
    health_url: str | None = None
    app: str | None = None
    #: ``refreshbus.io/inject`` as an annotation (see :func:`inject_requested` for the label).
    inject: bool = False
    auto_refresh: bool = False
    #: ``refreshbus.io/rollout``: the workload is versioned and its auto-refreshes roll out in
    #: these steps (``spec.rollout.steps`` values); None: not versioned.
    rollout: tuple[RolloutStep, ...] | None = None
    #: ``refreshbus.io/rollout-bake`` in seconds (``spec.rollout.bakeSeconds``).
    rollout_bake: int | None = None

    @property
    def sources(self) -> tuple[tuple[str, str], ...]:
        return (*(("ConfigMap", n) for n in self.configmaps), *(("Secret", n) for n in self.secrets))


def parse_annotations(annotations: Mapping[str, str]) -> PodOptions:
    """The pod's options.

    Raises:
        ContractError: they are unusable; the message says which annotation and why.
    """
    a = {k: (v or "").strip() for k, v in annotations.items()}
    configmaps = parse_names(a.get(pods.ANN_CONFIGMAPS), pods.ANN_CONFIGMAPS)
    secrets = parse_names(a.get(pods.ANN_SECRETS), pods.ANN_SECRETS)
    if not configmaps and not secrets:
        raise ContractError(
            f"neither {pods.ANN_CONFIGMAPS} nor {pods.ANN_SECRETS} names a ConfigMap or Secret to manage"
        )
    signal = a.get(pods.ANN_SIGNAL) or None
    url = a.get(pods.ANN_RELOAD_URL) or None
    process = a.get(pods.ANN_PROCESS) or None
    method = a.get(pods.ANN_RELOAD_METHOD) or None
    health = a.get(pods.ANN_HEALTH_URL) or None
    if signal and url:
        raise ContractError(
            f"{pods.ANN_SIGNAL} and {pods.ANN_RELOAD_URL} are both set: choose one reload action "
            "(a signal to the app's process, or an HTTP call)"
        )
    if signal:
        signal = signal.upper()
        if not signal.startswith("SIG"):
            signal = "SIG" + signal
        if signal not in SIGNALS:
            raise ContractError(
                f"{pods.ANN_SIGNAL}: unknown signal {a[pods.ANN_SIGNAL]!r}; "
                f"use one of {', '.join(sorted(SIGNALS))}"
            )
        if not process:
            raise ContractError(
                f"{pods.ANN_SIGNAL} needs {pods.ANN_PROCESS}: a regular expression matching the "
                "app's command line, so the sidecar knows which process to signal"
            )
    if process:
        try:
            re.compile(process)
        except re.error as exc:
            raise ContractError(
                f"{pods.ANN_PROCESS}: {process!r} is not a valid regular expression ({exc})") from None
    if url and (problem := http_url_problem(url)):
        raise ContractError(f"{pods.ANN_RELOAD_URL}: {url!r} {problem}")
    if method:
        if not url:
            raise ContractError(f"{pods.ANN_RELOAD_METHOD} is set without {pods.ANN_RELOAD_URL}")
        method = method.upper()
        if method not in HTTP_METHODS:
            raise ContractError(
                f"{pods.ANN_RELOAD_METHOD}: {method!r} is not one of {', '.join(sorted(HTTP_METHODS))}")
    if health and (problem := http_url_problem(health)):
        raise ContractError(f"{pods.ANN_HEALTH_URL}: {health!r} {problem}")
    inject = parse_bool(a.get(pods.ANN_INJECT), pods.ANN_INJECT)
    auto_refresh = parse_bool(a.get(pods.ANN_AUTO_REFRESH), pods.ANN_AUTO_REFRESH)
    rollout = parse_rollout_steps(a[pods.ANN_ROLLOUT]) if a.get(pods.ANN_ROLLOUT) else None
    bake = a.get(pods.ANN_ROLLOUT_BAKE)
    rollout_bake = parse_duration(bake, pods.ANN_ROLLOUT_BAKE) if bake else None
    if rollout_bake is not None and rollout is None:
        raise ContractError(f"{pods.ANN_ROLLOUT_BAKE} is set without {pods.ANN_ROLLOUT}")
    if rollout is not None and not configmaps:
        raise ContractError(
            f"{pods.ANN_ROLLOUT}: only ConfigMaps are versioned and rolled out, and "
            f"{pods.ANN_CONFIGMAPS} names none (Secret values are never copied by the operator)")
    return PodOptions(
        configmaps=configmaps,
        secrets=secrets,
        action="signal" if signal else "http" if url else "none",
        signal=signal,
        process=process,
        reload_url=url,
        reload_method=method,
        health_url=health,
        app=a.get(pods.ANN_APP) or None,
        inject=inject,
        auto_refresh=auto_refresh,
        rollout=rollout,
        rollout_bake=rollout_bake,
    )
