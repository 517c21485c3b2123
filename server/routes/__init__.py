"""HTTP routes, one module per resource; the app factory includes their routers."""
