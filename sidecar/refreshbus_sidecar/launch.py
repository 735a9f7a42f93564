"""The ``refreshbus-sidecar`` console script: without the sidecar's extra installed, it says
which extra to install (:mod:`refreshbus_wire.launch`) instead of a traceback."""

from __future__ import annotations

from typing import NoReturn

from refreshbus_wire import launch


def main() -> NoReturn:
    launch.run("refreshbus-sidecar", "sidecar", "refreshbus_sidecar.__main__:main")
