"""Time limits on reward code that hold in any thread or process.

Two ways to bound a call, because neither alone holds everywhere:

- `run_with_timeout(fn, timeout_s)` runs `fn` in the caller's process: with `SIGALRM` in the main thread
  (interrupting the computation), elsewhere in a watchdog thread the caller stops waiting for. It bounds
  Python code only: a signal handler runs between bytecodes, and a thread join needs the GIL back, so one C
  call that holds the GIL (a big-integer power such as sympy evaluating `9^{9^{9^9}}`) holds the caller too,
  for as long as it runs.
- `IsolatedCaller(fn)` runs `fn` in a child process (a fresh interpreter, never a fork of a process
  holding torch threads or a GPU). The caller waits on a pipe with a deadline;
  an overrun kills the child, whatever it is executing, and the next call starts a fresh one. This is what
  `math` uses by default; a pipe round trip costs tens of microseconds against a math-verify check's
  milliseconds. `fn` must be picklable by reference (a module-level function or a picklable object).

Both raise `RewardTimeout`, which the rewards count as `reward/<name>/timeouts`.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

__all__ = ["IsolatedCaller", "RewardTimeout", "run_with_timeout"]


class RewardTimeout(BaseException):
    """A bounded call overran. A BaseException so that a reward's own `except Exception` cannot eat it."""


# In-process timeouts.


def _can_use_signals() -> bool:
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


def _with_signal_timeout(fn: Callable[[], Any], timeout_s: float) -> Any:
    def on_alarm(signum, frame):
        raise RewardTimeout()

    start = time.monotonic()
    old_handler = signal.signal(signal.SIGALRM, on_alarm)
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        return fn()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler if old_handler is not None else signal.SIG_DFL)
        if old_delay > 0:  # someone else's timer was running: give it back what is left of it
            left = max(old_delay - (time.monotonic() - start), 1e-3)
            signal.setitimer(signal.ITIMER_REAL, left, old_interval)


def _with_thread_timeout(fn: Callable[[], Any], timeout_s: float) -> Any:
    box: dict[str, Any] = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # handed to the caller below
            box["error"] = e

    worker = threading.Thread(target=target, name="align-reward-timeout", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise RewardTimeout()  # the worker cannot be killed: it finishes in the background
    if "error" in box:
        raise box["error"]
    return box["value"]


def run_with_timeout(fn: Callable[[], Any], timeout_s: float | None) -> Any:
    """Call `fn()` in this process; raise `RewardTimeout` after `timeout_s` seconds (a signal in the main
    thread, a watchdog thread elsewhere; Python code only, see the module docstring). `timeout_s` None or
    <= 0 calls `fn()` directly."""
    if timeout_s is None or timeout_s <= 0:
        return fn()
    if _can_use_signals():
        try:
            return _with_signal_timeout(fn, timeout_s)
        except ValueError as e:  # e.g. a non-main interpreter: fall through to the thread watchdog
            if "signal" not in str(e):
                raise
    return _with_thread_timeout(fn, timeout_s)


# A child process per caller.


def _serve(read_fd: int, write_fd: int) -> None:
    """The child's loop, on the two pipe ends it inherited: receive `fn`, say
    "ready", then answer each argument tuple with `(True, fn(*args))` or `(False, "Type: message")`."""
    # SIGINT goes to the whole process group on Ctrl-C; the parent decides when this child ends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    inbox, outbox = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    fn = inbox.recv()
    outbox.send("ready")  # `fn` is unpickled, so its imports are done: the caller's deadlines start now
    while True:
        try:
            args = inbox.recv()
        except EOFError:
            return
        if args is None:
            return
        try:
            outbox.send((True, fn(*args)))
        except Exception as e:  # the parent re-raises it; the child keeps serving
            outbox.send((False, f"{type(e).__name__}: {e}"))


class IsolatedCallError(RuntimeError):
    """`fn` raised inside the child process, or the child died; the message says which."""


_START_TIMEOUT_S = 120.0  # a new child imports fn's modules (math-verify and sympy take about a second)
_LIVE: weakref.WeakSet[IsolatedCaller] = weakref.WeakSet()


class IsolatedCaller:
    """`caller(*args, timeout_s=...)` returns `fn(*args)` computed in a child process, raising
    `RewardTimeout` when it takes longer than `timeout_s` (the child is killed; the next call starts a new
    one) and `IsolatedCallError` when `fn` raised. Calls from several threads take turns. `starts` counts
    the children started (1 after the first call).

    The child is a fresh interpreter (`python -c`), not a fork or a
    multiprocessing spawn: a fork would copy a process holding torch threads or a GPU context, and
    multiprocessing's spawn re-imports the user's main script, which re-runs a script without a
    `__main__` guard. Messages go over two pipes of its own, so nothing the child prints can corrupt them."""

    def __init__(self, fn: Callable[..., Any]):
        self.fn = fn
        self.starts = 0
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._send: Connection | None = None
        self._recv: Connection | None = None
        _LIVE.add(self)

    def _start(self) -> None:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        code = f"from align.rewards.isolation import _serve; _serve({to_child_r}, {from_child_w})"
        # The parent's import path, so that fn's module (a user's reward file next to their script) loads.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))}
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", code],
                pass_fds=(to_child_r, from_child_w),
                stdin=subprocess.DEVNULL,
                env=env,
            )
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        self._send = Connection(to_child_w, readable=False)
        self._recv = Connection(from_child_r, writable=False)
        self.starts += 1
        try:
            self._send.send(self.fn)
            ready = self._recv.poll(_START_TIMEOUT_S) and self._recv.recv() == "ready"
        except (EOFError, OSError):  # the child failed while unpickling fn
            ready = False
        if not ready:
            self._kill()
            raise IsolatedCallError(
                f"the reward worker process did not start within {_START_TIMEOUT_S:.0f} s (see its stderr above)"
            )

    def _kill(self) -> int | None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
        code = proc.wait() if proc is not None else None
        for conn in (self._send, self._recv):
            if conn is not None:
                conn.close()
        self._proc = self._send = self._recv = None
        return code

    def close(self) -> None:
        """Stop the child process (a later call starts a new one)."""
        if self._proc is None:
            return
        try:
            self._send.send(None)
            self._proc.wait(1.0)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self._kill()

    def __call__(self, *args: Any, timeout_s: float | None) -> Any:
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                if self._proc is not None:
                    self._kill()
                self._start()
            budget = None if timeout_s is None or timeout_s <= 0 else timeout_s
            try:
                self._send.send(args)
                arrived = self._recv.poll(budget)
                reply = self._recv.recv() if arrived else None
            except (EOFError, OSError):  # the child died (killed by the OS, out of memory, a crash in C code)
                code = self._kill()
                raise IsolatedCallError(f"the reward worker process died (exit code {code})") from None
            if not arrived:
                self._kill()
                raise RewardTimeout()
        ok, value = reply
        if not ok:
            raise IsolatedCallError(value)
        return value


@atexit.register
def _close_all() -> None:
    for caller in list(_LIVE):
        caller.close()
