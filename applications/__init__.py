"""One module per mode; each exposes ``run(cfg) -> dict``."""
