"""``python -m config [PATH]``: regenerate the flag reference, ``docs/flags.md`` (or PATH)."""
from __future__ import annotations

import sys

from config import write_flag_docs

if __name__ == "__main__":
    if any(arg.startswith("-") for arg in sys.argv[1:]):  # --help or a typo: not a file name to write
        sys.exit(__doc__.strip())
    print(write_flag_docs(*sys.argv[1:2]))
