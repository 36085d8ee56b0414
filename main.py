"""Entry point: parse flags into a resolved config, pick the mode, run its application.

    python main.py --train --data data/digits --image_size 32 32
    python main.py --evaluation --resume output/resnet18/default/checkpoints/best.pth
"""
from __future__ import annotations

import errno
import importlib
import json
import logging
import os
import sys
from typing import Sequence

from config import MODES, ConfigError, check_files, parse_command_line, selected_mode

logger = logging.getLogger("main")


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that are the user's to fix (bad flags, data, checkpoints): a message, not a traceback."""
    from dataloader import ImageDecodeError
    from utils.checkpoint import CheckpointError
    from utils.runlock import RunDirLocked
    return (ValueError, FileNotFoundError, FileExistsError, FloatingPointError, CheckpointError, ImageDecodeError,
            RunDirLocked)


# OSErrors the user fixes outside the program: no permission, a read-only file system, a full disk or
# quota, a file over the size limit. Other OSErrors may be bugs and keep their traceback.
_ENVIRONMENT_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def _environment_error(e: OSError) -> str | None:
    """The one-line message for an OSError in ``_ENVIRONMENT_ERRNOS`` (what, which path, what to do), else None."""
    if e.errno not in _ENVIRONMENT_ERRNOS:
        return None
    where = f" {e.filename}" if e.filename else ""
    fix = ("free some space or choose another --output" if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
           else "check its permissions, or choose another --output for run directories")
    return f"{type(e).__name__}: cannot use{where}: {e.strerror}; {fix}"


def main(argv: Sequence[str] | None = None) -> int:
    cfg, given = parse_command_line(argv)
    mode = selected_mode(cfg)
    if mode is None:
        print("main.py: choose a mode: " + ", ".join(f"--{m}" for m in MODES) + " (see --help)", file=sys.stderr)
        return 2
    from utils.misc import setup_logging
    setup_logging()
    try:
        check_files(cfg, given)  # the mode's checks of its files: after parsing, which reads none
    except ConfigError as e:
        print(f"main.py: error: {e}", file=sys.stderr)
        return 2
    application = importlib.import_module(MODES[mode])
    try:
        result = application.run(cfg)
    except KeyboardInterrupt as e:  # Ctrl-C, or a signal a mode turned into utils.misc.Interrupted
        logger.error("interrupted%s", f": {e}" if str(e) else "")
        return 130
    except _user_errors() as e:
        if logger.isEnabledFor(logging.DEBUG):
            raise
        logger.error("%s: %s", type(e).__name__, e)
        return 1
    except OSError as e:
        message = _environment_error(e)
        if message is None or logger.isEnabledFor(logging.DEBUG):
            raise
        logger.error("%s", message)
        return 1
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one summary (rank 0's), as one log
        print(json.dumps(result, indent=2, default=str))
    return 130 if result.get("interrupted") else 0


if __name__ == "__main__":
    sys.exit(main())
