"""``python -m config [PATH]``: regenerate the flag reference, ``docs/flags.md`` (or PATH)."""
from __future__ import annotations

import sys

from config import write_flag_docs

if __name__ == "__main__":
    print(write_flag_docs(*sys.argv[1:2]))
