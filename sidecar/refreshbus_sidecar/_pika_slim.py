"""Import pika without asyncio.

``import pika`` imports every adapter, including ``AsyncioConnection`` and with it
``asyncio`` (~2.5 MB RSS in every pod). The sidecar only uses ``BlockingConnection``, so
the asyncio adapter module is replaced by a stub before pika is first imported. Nothing
in pika's blocking/select adapters refers to it; ``pika.adapters.AsyncioConnection`` is
simply ``None`` in this process.
"""

from __future__ import annotations

import sys
import types

if "pika" not in sys.modules and "pika.adapters.asyncio_connection" not in sys.modules:
    _stub = types.ModuleType("pika.adapters.asyncio_connection")
    _stub.__doc__ = "Stub: the refreshbus sidecar does not use pika's asyncio adapter."
    _stub.AsyncioConnection = None  # type: ignore[attr-defined]
    sys.modules["pika.adapters.asyncio_connection"] = _stub
