"""How the server logs: one place that configures the root logger for ``deepserve serve``.

``configure_logging`` runs first thing in the process (before sources are imported, so the
imports' lines look like the server's).
"""

from __future__ import annotations

import logging

from deepserve.service.settings import Settings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(settings: Settings) -> None:
    # force: `deepserve up` may have logged (and so configured logging) already
    logging.basicConfig(level=settings.log_level.upper(), format=TEXT_FORMAT, force=True)
