"""GitOps sync: keep ``/chora/capabilities/`` an exact projection of ``capabilities/``.

Layers, one import direction: ``projection``/``plan``/``checkpoint`` (pure) ←
``watching``/``drifting`` (events: files, etcd) and ``reading``/``writing`` (what a
reconcile reads, and skips; how it writes) ← ``reconciling`` (one reconcile) ← ``loop``
(when to reconcile) ← ``daemon`` (wiring) ← ``cli``.
"""
