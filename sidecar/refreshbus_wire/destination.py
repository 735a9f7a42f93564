"""Spring Cloud Bus destination patterns over refreshbus instance ids.

An instance id is ``<app>:<pod>`` (see :func:`instance_id`). A destination is matched
exactly as Spring Cloud Bus matches ``destinationService`` against ``spring.cloud.bus.id``:
Spring's ``AntPathMatcher`` with ``:`` as the separator (``*`` and ``?`` within one
segment, ``**`` for zero or more whole segments, case-sensitive, empty segments
dropped), after the sender-side expansion of ``PathDestinationFactory`` (``orders`` means
``orders:**``). Spring's multi-profile retry does not apply: refreshbus ids have no
profile segment.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache

from refreshbus_wire.pods import ANN_APP

SEPARATOR = ":"

#: Labels tried, in order, for the ``<app>`` part of an instance id.
APP_LABELS = ("app.kubernetes.io/name", "app")


def instance_id(app: str, pod: str) -> str:
    """The Spring-style instance id of a pod: ``<app>:<pod>``."""
    return f"{app}{SEPARATOR}{pod}"


def app_name(
    labels: Mapping[str, str], workload_name: str | None, pod_name: str,
    annotations: Mapping[str, str] | None = None,
) -> str:
    """Derive ``<app>`` for a pod: its ``refreshbus.io/app`` annotation, else its
    ``app.kubernetes.io/name`` label, else its ``app`` label, else the name of the
    workload that owns it, else the pod name itself."""
    override = (annotations or {}).get(ANN_APP)
    if override:
        return override
    for label in APP_LABELS:
        value = labels.get(label)
        if value:
            return value
    return workload_name or pod_name


def expand(destination: str | None) -> str:
    """Spring's sender-side expansion (``PathDestinationFactory``).

    ``None`` becomes ``**``; a destination with at most one ``:`` that does not already
    end in ``:**`` gets ``:**`` appended, so ``orders`` addresses every instance of
    ``orders``.
    """
    if destination is None:
        return "**"
    if (
        destination != "**"
        and destination.count(SEPARATOR) <= 1
        and not destination.lower().endswith(SEPARATOR + "**")
    ):
        return destination + SEPARATOR + "**"
    return destination


def matches(destination: str | None, instance: str) -> bool:
    """Whether a destination (as a user writes it) addresses an instance id."""
    if destination is None or destination.strip() == "":
        return True  # Spring treats a null/blank destination as a broadcast
    return ant_match(expand(destination), instance)


def ant_match(pattern: str, path: str) -> bool:
    """Spring's ``AntPathMatcher(":").match(pattern, path)``, ported faithfully."""
    if path.startswith(SEPARATOR) != pattern.startswith(SEPARATOR):
        return False
    patt = _tokens(pattern)
    dirs = _tokens(path)
    p_start, p_end = 0, len(patt) - 1
    d_start, d_end = 0, len(dirs) - 1

    # Leading segments up to the first "**".
    while p_start <= p_end and d_start <= d_end:
        if patt[p_start] == "**":
            break
        if not _segment_match(patt[p_start], dirs[d_start]):
            return False
        p_start += 1
        d_start += 1

    if d_start > d_end:  # path exhausted
        if p_start > p_end:
            return pattern.endswith(SEPARATOR) == path.endswith(SEPARATOR)
        if p_start == p_end and patt[p_start] == "*" and path.endswith(SEPARATOR):
            return True
        return all(p == "**" for p in patt[p_start : p_end + 1])
    if p_start > p_end:  # pattern exhausted, path not
        return False

    # Trailing segments after the last "**".
    while p_start <= p_end and d_start <= d_end:
        if patt[p_end] == "**":
            break
        if not _segment_match(patt[p_end], dirs[d_end]):
            return False
        if p_end == len(patt) - 1 and pattern.endswith(SEPARATOR) != path.endswith(SEPARATOR):
            return False
        p_end -= 1
        d_end -= 1
    if d_start > d_end:
        return all(p == "**" for p in patt[p_start : p_end + 1])

    # Segments between "**"s: find each run of fixed segments in the remaining path.
    while p_start != p_end and d_start <= d_end:
        p_next = next(i for i in range(p_start + 1, p_end + 1) if patt[i] == "**")
        if p_next == p_start + 1:  # "**:**" is one "**"
            p_start += 1
            continue
        run = patt[p_start + 1 : p_next]
        found = -1
        for i in range(d_end - d_start + 1 - len(run) + 1):
            if all(_segment_match(run[j], dirs[d_start + i + j]) for j in range(len(run))):
                found = d_start + i
                break
        if found == -1:
            return False
        p_start = p_next
        d_start = found + len(run)
    return all(p == "**" for p in patt[p_start : p_end + 1])


def _tokens(value: str) -> list[str]:
    # AntPathMatcher tokenizes without trimming and drops empty tokens.
    return [t for t in value.split(SEPARATOR) if t]


@lru_cache(maxsize=1024)
def _segment_regex(segment: str) -> re.Pattern[str]:
    parts = (".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in segment)
    return re.compile("".join(parts), re.DOTALL)


def _segment_match(pattern: str, value: str) -> bool:
    return _segment_regex(pattern).fullmatch(value) is not None
