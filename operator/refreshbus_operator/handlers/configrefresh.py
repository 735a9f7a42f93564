"""ConfigRefresh: create/resume/spec change start or resume a round; delete stops it.

No finalizer: deleting a ConfigRefresh needs no clean-up beyond stopping its round
(``optional=True`` on the delete handler keeps kopf from adding one).
"""

from __future__ import annotations

import copy
from typing import Any

import kopf

from refreshbus_operator import GROUP, PLURAL, VERSION
from refreshbus_operator.engine import Engine


def _engine(memo: kopf.Memo) -> Engine:
    engine: Engine = memo["engine"]
    return engine


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def reconcile(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    outcome = _engine(memo).reconcile(_plain(body))
    logger.debug("reconcile: %s", outcome)


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
async def forget(namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    if namespace is not None:
        _engine(memo).forget(namespace, name)


def _plain(body: kopf.Body) -> dict[str, Any]:
    # The engine keeps parts of the body beyond this handler call; kopf's Body is a live view.
    return copy.deepcopy(dict(body))
