"""A scale harness for the operator: many pod objects and many SIMULATED sidecars.

Not the sidecar. :mod:`refreshbus_sim.sidecars` stands in for thousands of sidecars in
one asyncio process so that what is measured is the operator, the broker and the API
server: each simulated pod has its own AMQP connection, its own exclusive queue with the
four bindings a real sidecar declares, and acks with its pod's real identity token; it
fetches nothing, writes nothing and signals nothing (``make bench-sidecar`` and
``make bench-e2e`` measure the real sidecar). :mod:`refreshbus_sim.fleet` creates the
pod objects through one API client, concurrently. See docs/scale.md.
"""
