"""One module per mode (or family of modes) of ``main.py``: its flag groups, its checks and its ``Mode``
records (``MODES``), which ``config``'s registry collects. They import ``config.base``, never ``config``."""
