"""Shared helpers for integration and end-to-end tests: pods as API objects
(:mod:`.pods`), real sidecar processes for them (:mod:`.sidecars`) and real apps to
reload (:mod:`.apps`). Importable as ``refreshbus_support`` (``tests/support`` is on
pytest's ``pythonpath``)."""
