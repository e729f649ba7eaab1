"""GitOps sync: keep ``/chora/capabilities/`` an exact projection of ``capabilities/``.

Layers, one import direction: ``projection``/``plan`` (pure) ← ``watching``/``drifting``
(file system) ← ``reconciling`` (the loop, the only user of the store) ← ``cli``.
"""
