"""Child processes that start without paying torch's import again.

The kill tests start a fresh process per kill point; importing torch is most of each
start (about 3 s on 2 cores). A forkserver imports it once, before it has run any
threaded op, and forks every child from that state, so each child is a real, separate
process that SIGKILL can stop at any instruction."""

from __future__ import annotations

import multiprocessing

PRELOAD = ["torch", "m2kd.runtime.bundle", "m2kd.runtime.cli"]

_context = multiprocessing.get_context("forkserver")
_context.set_forkserver_preload(PRELOAD)


def start(target, *args) -> multiprocessing.Process:
    """Starts target(*args) in a child forked from the preloaded server."""
    proc = _context.Process(target=target, args=args, daemon=True)
    proc.start()
    return proc


def warm() -> None:
    """Starts the server (and its imports) now, so that a child timed next is timed alone."""
    child = start(int)
    child.join()


def event():
    return _context.Event()
