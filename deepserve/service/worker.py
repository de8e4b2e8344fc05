"""One worker process of ``deepserve serve --workers N``, started by its supervisor
(``service.workers``) as ``python -m deepserve.service.worker``.

The supervisor writes one line of JSON on the worker's stdin (the settings to serve with and the
worker's ``WorkerSpec``) and keeps the pipe open: the settings travel there rather than in the
environment or the command line, where other processes could read its tokens, and the pipe
closing tells the worker its supervisor is gone. The worker then serves like one process does
(``service.__main__.serve``), on the ports its supervisor holds for it.
"""

from __future__ import annotations

import json
import sys

from deepserve.service.settings import Settings
from deepserve.service.worker_state import WorkerSpec


def main() -> int:
    line = sys.stdin.buffer.readline()
    if not line:  # the supervisor went away before it said anything
        return 1
    spec = json.loads(line)
    settings = Settings.model_validate(spec["settings"])
    from deepserve.service.__main__ import run_worker

    return run_worker(settings, WorkerSpec.from_json(spec["worker"]))


if __name__ == "__main__":
    raise SystemExit(main())
