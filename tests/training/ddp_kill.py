"""Run `roli` under torchrun, SIGKILL-ing rank RANK_TO_KILL at its N-th training loss (tests/training/test_ddp.py)."""

import os
import signal
import sys

from roli.cli.main import main
from roli.training import loop

if os.environ.get("RANK") == os.environ.get("RANK_TO_KILL"):
    real, calls = loop.F.cross_entropy, [0]

    def dying(*args, **kwargs):
        calls[0] += 1
        if calls[0] == int(os.environ["KILL_AT_LOSS"]):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)

    loop.F = type("F", (), {"cross_entropy": staticmethod(dying)})

sys.exit(main(sys.argv[1:]))
