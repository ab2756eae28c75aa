"""Run `roli` under torchrun, SIGKILL-ing rank RANK_TO_KILL at its N-th training loss (tests/training/test_ddp.py)."""

import os
import signal
import sys

from roli.cli.main import main
from roli.objectives import base  # the objectives compute the training loss (BatchMean.ce)

if os.environ.get("RANK") == os.environ.get("RANK_TO_KILL"):
    real, calls = base.F.cross_entropy, [0]

    def dying(*args, **kwargs):
        calls[0] += 1
        if calls[0] == int(os.environ["KILL_AT_LOSS"]):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)

    base.F = type("F", (), {"cross_entropy": staticmethod(dying), "kl_div": staticmethod(base.F.kl_div),
                            "log_softmax": staticmethod(base.F.log_softmax)})

sys.exit(main(sys.argv[1:]))
