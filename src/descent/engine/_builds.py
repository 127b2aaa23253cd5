"""Generated kernels built in a background thread, one build per key (both backends)."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Generic, TypeVar

K = TypeVar("K")


class Builds(Generic[K]):
    """The kernels asked for so far, by key: built once each, in a background thread.

    A build that fails is warned about once (``failure`` says what the engine does
    instead) and then reported as missing, so the step takes its next path.
    """

    def __init__(self, thread_name: str, failure: str) -> None:
        self.futures: dict[Hashable, Future[K]] = {}
        self.warned: set[Hashable] = set()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=thread_name)
        self.failure = failure
        self._lock = threading.Lock()

    def get(self, key: Hashable, build: Callable[[], K], wait: bool = False) -> K | None:
        """The kernel for ``key`` if it is built (``build`` runs in the background the
        first time; with ``wait``, until it is done); None until then, or if it failed."""
        with self._lock:
            future = self.futures.get(key)
            if future is None:
                future = self.futures[key] = self.executor.submit(build)
        if wait:
            future.exception()
        if not future.done():
            return None
        error = future.exception()
        if error is not None:
            if key not in self.warned:
                self.warned.add(key)
                warnings.warn(
                    f"descent.engine: {self.failure} ({error!r})", RuntimeWarning, stacklevel=4
                )
            return None
        return future.result()

    def error(self, key: Hashable) -> BaseException | None:
        """Why the build of ``key`` failed (None if it did not, or is still running)."""
        future = self.futures.get(key)
        return None if future is None or not future.done() else future.exception()

    def drain(self) -> None:
        """Return once every build asked for so far has finished (or failed)."""
        self.executor.submit(lambda: None).result()

    def states(self) -> dict[Hashable, Any]:
        """Each key's build: "ok", "building" or the error's repr (for reports)."""
        return {
            key: "building"
            if not future.done()
            else "ok"
            if future.exception() is None
            else repr(future.exception())
            for key, future in self.futures.items()
        }


__all__ = ["Builds"]
