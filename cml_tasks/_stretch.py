"""Stretches of a repeated event (busy answers, an unreachable API): said once per stretch,
whichever thread meets one first, so that a hundred waiting windows log one line."""

from __future__ import annotations

import math
import threading
import time


class Stretch:
    """Events less than `gap` seconds apart are one stretch."""

    def __init__(self, gap: float) -> None:
        self.gap = gap
        self._lock = threading.Lock()
        self._last = -math.inf

    def begins(self) -> bool:
        """Note an event now; True when it begins a stretch (none for `gap` seconds)."""
        with self._lock:
            now = time.monotonic()
            fresh = now - self._last > self.gap
            self._last = now
            return fresh
