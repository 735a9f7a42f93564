"""The chaos suite: a seeded fault-injection run of refreshbus against real components.

Real RabbitMQ and kube-apiserver (:mod:`refreshbus_testenv`), two operator replicas with
kopf peering, real sidecar processes reloading real Node.js apps that journal and check
every load (:mod:`refreshbus_support.fleet`). :mod:`.plan` turns a seed into a schedule of
refresh rounds and faults, :mod:`.world` owns the processes and injects the faults,
:mod:`.runner` plays the schedule and checks the invariants, ``python -m refreshbus_chaos``
(``make chaos``) and ``tests/chaos/test_chaos_short.py`` (``make test``) run it.
"""
