"""``python main.py ARGS`` with the libraries' weights caches in the current folder and downloads forbidden
(TORCH_HOME=./torch, HF_HOME=./hf, HF_HUB_OFFLINE=1): the bad-input matrix runs each case as a process in a
fresh folder, and its cached-weights cases (#25 item 1) put the files there."""
from __future__ import annotations

import os
import sys
from pathlib import Path

if __name__ == "__main__":
    env = {**os.environ, "TORCH_HOME": os.path.abspath("torch"), "HF_HOME": os.path.abspath("hf"),
           "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    main = Path(__file__).resolve().parents[2] / "main.py"
    os.execve(sys.executable, [sys.executable, str(main), *sys.argv[1:]], env)
