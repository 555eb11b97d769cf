"""CPU priority of the inference threads: the HTTP front end runs first, so that under overload a request is
answered (or refused) at once instead of waiting for a core behind the model runs."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


def lower_thread_priority(nice: int) -> None:
    """Raise the nice value of the calling thread by `nice` (Linux schedules each thread on its own; elsewhere this
    does nothing)."""
    if nice and sys.platform == "linux":
        thread = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, thread, min(os.getpriority(os.PRIO_PROCESS, thread) + nice, 19))


def call_at_lower_priority(nice: int, function: Callable[..., T], *args: object) -> T:
    """`function(*args)` in a new thread of priority lowered by `nice`; the threads it starts, such as the intra-op
    pool ONNX Runtime creates with a session, inherit that priority."""
    with ThreadPoolExecutor(1, thread_name_prefix="load", initializer=lower_thread_priority, initargs=(nice,)) as pool:
        return pool.submit(function, *args).result()
