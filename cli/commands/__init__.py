"""One module per `cielr` sub-command group; each exposes ``register(app)``."""
