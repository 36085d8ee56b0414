"""Shared helpers: checkpoints, devices and seeds, metrics, logging, plots. No global state."""
