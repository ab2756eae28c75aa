"""Fault injection without test hooks in roli: run the `roli` CLI in this process and SIGKILL it at the N-th call of
one function, as a power cut or the OOM killer would.

    python tests/reliability/killer.py TARGET N [--match REGEX] -- ROLI-ARGS...

TARGET is `module:attribute` or `module:Class.attribute`, patched where roli looks it up, e.g.
`torch.optim.adamw:AdamW.step` (mid-epoch), `roli.training.trainer:evaluate` (validation),
`roli.files:replace_into` (a file write, after its temp file is complete and before the rename),
`roli.training.pipeline:evaluate` (test evaluation), `roli.sweep.run:run_cell` (between sweep cells) or
`roli.evaluation.autoattack:_attack_chunk` (inside AutoAttack). With --match, only calls whose arguments (as text)
match REGEX are counted. The process kills itself *before* the N-th counted call runs.
"""

from __future__ import annotations

import importlib
import os
import re
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: netguard

import netguard


def patch(target: str, nth: int, match: str | None) -> None:
    module_name, _, attr_path = target.partition(":")
    owner = importlib.import_module(module_name)
    *parents, attr = attr_path.split(".")
    for p in parents:
        owner = getattr(owner, p)
    real = getattr(owner, attr)
    calls = 0

    def killing(*args, **kwargs):
        nonlocal calls
        if match is None or re.search(match, " ".join(map(str, args))):
            calls += 1
            if calls == nth:
                sys.stdout.flush()
                sys.stderr.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)

    setattr(owner, attr, killing)


def main() -> None:
    argv = sys.argv[1:]
    sep = argv.index("--")
    spec, roli_args = argv[:sep], argv[sep + 1:]
    match = spec[spec.index("--match") + 1] if "--match" in spec else None
    netguard.install()
    import torch

    torch.set_num_threads(1)  # as the in-process reference (the `one_thread` fixture); `roli eval` has no threads option
    patch(spec[0], int(spec[1]), match)
    from roli.cli.main import main as roli_main

    sys.exit(roli_main(roli_args))


if __name__ == "__main__":
    main()
