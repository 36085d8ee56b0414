"""The experiments feature: run folders read without torch (``runs``), what a training run records for
comparing runs (``tracking``), and sweep files with the processes that run their variants (``sweep_plan``).

Imports nothing on purpose: ``--compare`` imports ``experiments.runs`` and stays torch-free.
"""
