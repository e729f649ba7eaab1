"""The heartbeat daemon: ``python -m services.heartbeat``.

Keeps ``/chora/capabilities/{ns}/health`` alive, on one lease per service, for every
Service-type capability. Modules, from the edge inwards (imports point downwards only):

- ``cli``: flags and environment → ``Settings`` (``settings``); signals.
- ``daemon``: wiring (store, ``metrics``, /healthz server, discovery, loop) and ordered,
  bounded shutdown.
- ``discovering``: the service set from etcd (read + watch + periodic re-read) or a dir.
- ``loop``: the one scheduler loop (service set, revoke queue, due beats, ping, exit).
- ``rounds``: one beat round (refresh, grant, batched write, fallback) against a small
  ``LeaseStore`` protocol; ``probing``: probe scheduling, results and the probe I/O.
- ``sessions``, ``schedule``, ``catalog``, ``states``, ``checks``: pure logic and data,
  no I/O (no etcd client, no sockets).

The health states (healthy, unknown, unhealthy, down), restart without a blink and
``--revoke-on-exit`` are documented exactly in ``states.STATES``, which ``--help``
prints as its epilog.
"""
