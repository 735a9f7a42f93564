"""refreshbus operator: ConfigRefresh in, targeted refresh events out, acks folded into status.

Layout (kopf style):

- ``handlers/``: kopf registrations only; each translates a kopf event into a call of a
  plain, typed function elsewhere in this package.
- ``settings``: the one typed configuration (environment + CLI) and the kopf settings.
- ``targets``: resolving ``spec.target`` into pods, skipped pods and routing keys.
- ``status``: pure functions that fold results into the ``status`` of a ConfigRefresh.
- ``publishing`` / ``acks``: the broker side (pika, each in its own thread).
- ``engine`` / ``rounds`` / ``records``: the rounds of this replica; one refresh round from
  resolution to a final phase; the round record (annotation) and spec helpers.
- ``autorefresh``: ConfigRefreshes created when a watched ConfigMap/Secret changes.
- ``kube``, ``events``, ``metrics``: API access, Kubernetes Events, Prometheus metrics.
"""

GROUP = "refreshbus.io"
VERSION = "v1alpha1"
PLURAL = "configrefreshes"
KIND = "ConfigRefresh"
API_VERSION = f"{GROUP}/{VERSION}"

__all__ = ["API_VERSION", "GROUP", "KIND", "PLURAL", "VERSION"]
