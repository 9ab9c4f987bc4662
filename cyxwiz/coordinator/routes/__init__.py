"""The coordinator's routers by resource; each route names its rule of :data:`cyxwiz.authz.RULES`."""
