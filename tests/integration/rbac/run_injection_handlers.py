"""``kopf run`` this file to run only the injection handlers (handlers/injection.py),
without the rest of the operator (broker, ConfigRefresh handlers). The module is loaded
by path so the handlers package's __init__ (which registers everything) is not run."""

import importlib.util
import os
from pathlib import Path

import refreshbus_operator
from refreshbus_operator import metrics

_PATH = Path(refreshbus_operator.__file__).parent / "handlers" / "injection.py"
_SPEC = importlib.util.spec_from_file_location("refreshbus_injection_handlers", _PATH)
assert _SPEC is not None
assert _SPEC.loader is not None
_MODULE = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(_MODULE)

# Tests scrape these handlers' metrics (the whole operator serves them from runtime.py).
if os.environ.get("REFRESHBUS_TEST_METRICS_PORT"):
    metrics.serve(int(os.environ["REFRESHBUS_TEST_METRICS_PORT"]))
