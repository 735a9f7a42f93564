"""Console scripts that say which extra to install instead of dying with a traceback.

``pip install refreshbus`` installs both ``refreshbus-operator`` and ``refreshbus-sidecar``
but neither's dependencies (they come with the ``operator`` and ``sidecar`` extras). Each
script runs its real ``main`` through :func:`run`, which turns a missing third-party
module into one line naming the extra, and exit status 2 (a usage error, as for bad
settings). Lives in the one package both sides share; stdlib only.
"""

from __future__ import annotations

import importlib
import sys
from typing import NoReturn

#: Our own top-level packages: a missing one is a broken install, not a missing extra.
_OURS = frozenset({"refreshbus_wire", "refreshbus_sidecar", "refreshbus_operator"})


def run(prog: str, extra: str, target: str) -> NoReturn:
    """Import and call ``target`` (``module:function``), exit with its status.

    A third-party module missing at import or while running (the sidecar imports pika
    only when it starts) ends the process with a one-line hint and status 2.
    """
    module, _, function = target.partition(":")
    try:
        status = getattr(importlib.import_module(module), function)()
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.partition(".")[0] in _OURS:
            raise
        print(
            f"{prog}: the {extra!r} extra is not installed (no module named {exc.name!r}): "
            f"pip install 'refreshbus[{extra}]'",
            file=sys.stderr,
        )
        raise SystemExit(2) from None
    raise SystemExit(status)
