"""The heartbeat daemon: ``python -m services.heartbeat``.

Keeps ``/chora/capabilities/{ns}/health`` alive, on one lease per service, for every
Service-type capability. Modules, from the edge inwards:

- ``cli``: flags and environment → ``Settings``; signals.
- ``daemon``: wiring and ordered, bounded shutdown.
- ``discovering``: the service set from etcd (read + watch + periodic re-read) or a dir.
- ``beating``: the one scheduler loop (batched keep-alives and writes, probes on a pool).
- ``sessions``: one service's lease, count and probe history.
- ``schedule``, ``catalog``, ``states``, ``checks``: pure logic and the probes.

The health states (healthy, unknown, unhealthy, down), restart without a blink and
``--revoke-on-exit`` are documented exactly in ``states.STATES``, which ``--help``
prints as its epilog.
"""
