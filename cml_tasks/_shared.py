"""Objects one process shares between concurrent task runs: a client's pool, a poller.

`functools.lru_cache` is not enough: threads that ask at the same moment each build their
own object, so concurrent windows would poll through separate pollers.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Hashable
from typing import Generic, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class Shared(Generic[P, T]):
    """Call `factory` once per distinct (hashable) arguments, even from many threads at once."""

    def __init__(self, factory: Callable[P, T]) -> None:
        self._factory = factory
        self._made: dict[Hashable, T] = {}
        self._lock = threading.Lock()
        self.__qualname__: str = factory.__qualname__
        functools.update_wrapper(self, factory)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> T:
        key = (args, tuple(sorted(kwargs.items())))
        with self._lock:
            if key not in self._made:
                self._made[key] = self._factory(*args, **kwargs)
            return self._made[key]

    def __reduce__(self) -> str:
        """Pickle by reference, like `functools.lru_cache`: Prefect cloudpickles flows that
        use the tasks, and the lock and the objects made must stay in this process."""
        return self.__qualname__

    def cache_clear(self) -> None:
        """Forget every object made (tests start from a clean process state)."""
        with self._lock:
            self._made.clear()


def shared(factory: Callable[P, T]) -> Shared[P, T]:
    """Decorator form of `Shared`."""
    return Shared(factory)
