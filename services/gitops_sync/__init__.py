"""GitOps sync: keep ``/chora/capabilities/`` an exact projection of ``capabilities/``.

Layers, one import direction: ``projection``/``plan`` (pure) ← ``watching``/``drifting``
(events: files, etcd) ← ``reconciling`` (one reconcile, the only user of the store) ←
``loop`` (when to reconcile) ← ``daemon`` (wiring) ← ``cli``.
"""
