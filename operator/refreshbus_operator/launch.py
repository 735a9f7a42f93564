"""The ``refreshbus-operator`` console script: without the operator's extra installed, it says
which extra to install (:mod:`refreshbus_wire.launch`) instead of a traceback."""

from __future__ import annotations

from typing import NoReturn

from refreshbus_wire import launch


def main() -> NoReturn:
    launch.run("refreshbus-operator", "operator", "refreshbus_operator.__main__:main")
