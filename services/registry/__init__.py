"""The registry service (SAP-044 "Manifest"): ``python -m services.registry``.

Running services register instances over HTTP; each instance is a key under
``/chora/services/{name}/{id}`` on a lease of its own, so etcd, not this process, removes
a silent one, and a restart or a second replica changes nothing. Every read is answered
from an in-memory view fed by one watch. Modules, from the edge inwards (imports point
downwards only):

- ``cli``: flags and environment → ``Settings`` (``settings``); signals; the ``token``
  command that mints a token.
- ``daemon``: wiring (store, view, follower, quorum check, status writer, HTTP server)
  and the ordered, bounded shutdown.
- ``api`` (FastAPI routes, OpenAPI) and ``asgi`` (the hot GET, the body cap, headers,
  request metrics); ``streaming``: one change stream (SSE).
- ``instances``: register, heartbeat, deregister against etcd (``keepalives``: beats
  arriving together share one keep-alive stream); ``loop``: the status writer
  (``up`` → ``unhealthy``); ``following``: the watch and the quorum check.
- ``guard``: who may do what (401 / 403), the token file kept in step; ``tokens``: the
  file's format and the scopes (pure); ``tls``: the HTTPS context, kept in step.
- ``hub``: the view's owner on the event loop.
- ``view``, ``state``, ``changes``, ``records``: pure data and rules, no I/O.
"""

VERSION = "1.0.0"  # the SAP-044 API this registry serves
