"""The nodes' mTLS front door to the Prefect API: allow-listed routes narrowed to each node's own queue.

Public API: :class:`cyxwiz.gateway.proxy.Gateway` (ASGI app), :func:`cyxwiz.gateway.service.build_gateway`
(listener + app), :mod:`cyxwiz.gateway.policy` (the allow-list).
"""
