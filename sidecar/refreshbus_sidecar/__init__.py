"""refreshbus sidecar: receives targeted refresh events, delivers the new config into the
shared volume atomically, reloads the unmodified app, and acks back.

Modules, one concern each: :mod:`config` (settings), :mod:`kubeapi` (stdlib API
client), :mod:`bus` (pika), :mod:`delivery` (atomic writer), :mod:`reload` (signal/HTTP),
:mod:`refresher` (event -> fetch -> write -> reload -> ack), :mod:`watch` (watchfiles
mode), :mod:`health` (/readyz, /livez, /metrics), :mod:`logs` (JSON logs).
"""

from refreshbus_sidecar import _pika_slim  # noqa: F401  (must run before pika is imported)
