"""The cyclic garbage collector, tuned for a server whose heap is mostly its loaded models.

Python's defaults (a young collection every 700 net container allocations; a full one when the
objects promoted since the last reach a quarter of the old generation) suit a program whose heap
grows and shrinks with its work. A model server's does not: after start-up, hundreds of thousands
of long-lived objects (torch, ONNX Runtime, tokenizers, the models) sit in the old generation and
every full collection walks them all, on the event loop; meanwhile each request in flight holds a
few dozen containers, so under load the young generations fill with requests that are still
running and are scanned again and again. Measured on digits-cnn at 320 clients, 12 s of load:
2,530 young, 230 middle and 21 full collections cost 277 + 519 + 761 ms of the loop (13 % of it;
each full collection 36 ms, straight into p99).

- ``settle`` (after the start-up load, and after a run-time load or unload): collect once, then
  ``gc.freeze()`` what is left, so no later collection walks the models again. Unfreezing first
  lets an unloaded model's cycles be collected before the rest is frozen again.
- ``tune``: the young threshold raised to ``YOUNG_THRESHOLD``. Requests free almost everything
  they allocate by reference counting, so collections become rare (3 in the run above) while
  cyclic garbage is still collected, at most ``YOUNG_THRESHOLD`` containers later.

``DEEPSERVE_GC_TUNING=false`` keeps Python's defaults.
"""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger(__name__)

YOUNG_THRESHOLD = 10_000


def tune() -> None:
    """Raise the young generation's threshold (the older generations' stay as they are)."""
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)


def settle(why: str) -> None:
    """Collect what the last (un)load left behind and freeze the rest out of every later collection."""
    t0 = time.perf_counter()
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    log.debug("heap settled after %s: %d objects frozen in %.0f ms", why, gc.get_freeze_count(),
              1000 * (time.perf_counter() - t0))  # fmt: skip
