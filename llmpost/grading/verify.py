"""Grading MATH answers: the final ``\\boxed{}`` answer, Hendrycks' normalised string match, and math-verify equivalence.

``is_correct``/``grade`` decide correctness with math-verify (Hugging Face, ``pip install math-verify``), run in a
small pool of worker *subprocesses* so that every call is bounded in wall time, from any thread or process:
math-verify's own timeouts use ``signal.alarm`` (main thread only) and cannot stop C-level work such as big-integer
powers, so a call that overruns its deadline kills its worker, and a replacement starts at once. The workers are
plain ``subprocess.Popen`` children (:mod:`llmpost.grading.verify_worker` run as a script, talking JSON lines over
pipes), not ``multiprocessing`` processes, so daemonic ``multiprocessing.Pool`` workers, which may not start
``multiprocessing`` children, can use them too. Each worker also caps its CPU time per job (``RLIMIT_CPU``) so an
orphan cannot spin forever.
Fallback: if no subprocess can be started (``OSError``, or a worker that dies while starting), math-verify runs in
the calling process, bounded by its signal timeouts in the main thread and unbounded elsewhere.

Measured here (2 cores shared with other jobs, load ~4): ``grade`` of the 500 MATH-500 reference solutions against
their answers takes ~5.5 s with 2 started workers (~4.3 s repeated: math-verify caches parses), ~9 s from a cold pool
(a worker imports sympy + math-verify in ~0.7-1.5 s); the pipe round trip costs ~0.6 ms per item.
"""

from __future__ import annotations

import atexit
import functools
import json
import math
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed

from tqdm.auto import tqdm

from llmpost.grading import verify_worker
from llmpost.grading.verify_worker import verify_here

__all__ = ["grade", "is_correct", "shutdown"]

_START_TIMEOUT = 120.0  # seconds a new worker may take to import math-verify (not counted in a call's timeout)


class _StartError(RuntimeError):
    pass


class _Worker:
    """One grading subprocess: :mod:`llmpost.grading.verify_worker` run as a script, answering one JSON line per
    request."""

    def __init__(self):
        code = "import sys, runpy; sys.path.pop(0); runpy.run_path(sys.argv[1], run_name='__main__')"
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        script = os.path.abspath(verify_worker.__file__)
        self.proc = subprocess.Popen([sys.executable, "-c", code, script], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env, close_fds=True)
        self.ready = False

    def _readline(self, deadline: float) -> bytes | None:
        """One line from the worker, or None at the deadline; raises EOFError when the worker died."""
        buf, fd = b"", self.proc.stdout.fileno()
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 64)
            if not chunk:
                raise EOFError("grading worker exited")
            buf += chunk
        return buf.strip()

    def run(self, gold: str, completion: str, timeout: float) -> bool | None:
        """True/False from math-verify, None when the job overran ``timeout`` (the caller then kills the worker)."""
        if not self.ready:
            try:
                started = self._readline(time.monotonic() + _START_TIMEOUT) == b"ready"
            except EOFError:
                started = False
            if not started:
                raise _StartError("grading worker did not start")
            self.ready = True
        self.proc.stdin.write((json.dumps([gold, completion, timeout]) + "\n").encode("ascii"))
        self.proc.stdin.flush()
        reply = self._readline(time.monotonic() + timeout)
        return None if reply is None else reply == b"1"

    def kill(self) -> None:
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        self.proc.kill()
        self.proc.wait()


class _Pool:
    """Workers shared by all threads of this process; grows up to the requested size, never shrinks (until shutdown)."""

    def __init__(self):
        self.cond = threading.Condition()
        self.idle: list[_Worker] = []
        self.all: set[_Worker] = set()
        self.closed = False

    def acquire(self, size: int) -> _Worker:
        with self.cond:
            while not self.idle and len(self.all) >= size:
                self.cond.wait()
            if self.idle:
                return self.idle.pop()
            worker = _Worker()  # Popen returns at once; the import happens in the child
            self.all.add(worker)
            return worker

    def release(self, worker: _Worker, healthy: bool) -> None:
        if not healthy or self.closed:
            worker.kill()
        with self.cond:
            if self.closed:
                return
            if not healthy:
                self.all.discard(worker)
                try:  # the replacement imports math-verify while the caller moves on
                    worker = _Worker()
                    self.all.add(worker)
                except OSError:
                    worker = None
            if worker is not None:
                self.idle.append(worker)
            self.cond.notify()

    def shutdown(self) -> None:
        with self.cond:
            self.closed = True
            workers, self.all, self.idle = list(self.all), set(), []
        for worker in workers:
            worker.kill()


_POOL: _Pool | None = None
_POOL_LOCK = threading.Lock()
_ABANDONED: list = []  # a forked child keeps (but never uses) its parent's workers, so their pipes stay untouched


def _get_pool() -> _Pool:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = _Pool()
        return _POOL


def _after_fork_in_child() -> None:
    global _POOL, _POOL_LOCK
    _ABANDONED.append(_POOL)
    _POOL, _POOL_LOCK = None, threading.Lock()


def shutdown() -> None:
    """Stop this process's grading workers (also registered with ``atexit``); the next call starts new ones."""
    global _POOL
    with _POOL_LOCK:
        pool, _POOL = _POOL, None
    if pool is not None:
        pool.shutdown()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(shutdown)


def _default_workers() -> int:
    return min(4, os.cpu_count() or 1)


def _verify_in_caller(gold: str, completion: str, timeout: float) -> bool:
    """Fallback: math-verify in this process, signal-bounded in the main thread, unbounded in others."""
    in_main = threading.current_thread() is threading.main_thread()
    return verify_here(gold, completion, max(1, math.ceil(timeout)) if in_main else None)


def _grade_one(completion, gold, timeout: float, size: int) -> bool:
    if not isinstance(completion, str) or not isinstance(gold, str):
        return False
    pool = _get_pool()
    try:
        worker = pool.acquire(size)
    except OSError:  # cannot start a subprocess here: grade in this process (see the module docstring)
        return _verify_in_caller(gold, completion, timeout)
    started, healthy = True, False
    try:
        result = worker.run(gold, completion, timeout)
        healthy = result is not None
        return bool(result)
    except _StartError:
        started = False
    except Exception:  # a worker that died mid-job (EOF, broken pipe): this answer is False
        return False
    finally:  # also on KeyboardInterrupt, so the pool never loses a slot
        pool.release(worker, healthy)
    assert not started
    return _verify_in_caller(gold, completion, timeout)  # workers cannot run math-verify here: grade in this process


@functools.cache
def _math_verify_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("math_verify") is not None


def _check(timeout: float) -> None:
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds, got timeout={timeout}")
    if not _math_verify_installed():
        raise ImportError("grading MATH answers needs math-verify: pip install math-verify")


def is_correct(completion: str, gold: str, timeout: float = 5.0) -> bool:
    """Whether ``completion``'s final answer equals ``gold``, by math-verify: ``verify(parse(gold), parse(completion))``.

    Gold first (math-verify is not symmetric), gold parsed as ``\\boxed{gold}`` (see :func:`llmpost.grading.verify_worker.verify_here`), the completion
    with math-verify's default extraction (``LatexExtractionConfig()``, ``ExprExtractionConfig()``; boxed answers
    first). Bounded by ``timeout`` seconds of grading (waiting for a free worker, or for a new one to import
    math-verify, is not counted); a timeout, junk input (non-strings) or any error gives False. Safe from any thread
    and from worker processes. Raises only for ``timeout <= 0`` and when math-verify is not installed.
    """
    _check(timeout)
    return _grade_one(completion, gold, timeout, _default_workers())


def grade(completions: Sequence[str], golds: Sequence[str], timeout: float = 5.0,
          workers: int | None = None) -> list[bool]:
    """``is_correct`` for many pairs in parallel over the worker pool, results in input order.

    ``workers`` (default ``min(4, os.cpu_count())``) bounds the subprocesses this batch uses; each item is bounded by
    ``timeout`` like ``is_correct``. The 500 MATH-500 reference solutions take ~5.5 s on 2 workers here (module doc).
    """
    _check(timeout)
    if len(completions) != len(golds):
        raise ValueError(f"completions and golds differ in length: {len(completions)} vs {len(golds)}")
    size = workers or _default_workers()
    if size < 1:
        raise ValueError(f"workers must be >= 1, got workers={workers}")
    if not completions:
        return []
    # Each distinct (completion, gold) pair is graded once: sampled answers repeat a lot (direct answers especially).
    pairs = [(c if isinstance(c, str) else None, g if isinstance(g, str) else None) for c, g in zip(completions, golds)]
    unique = list(dict.fromkeys(pairs))  # non-strings become None: graded False, like _grade_one does
    from llmpost.utils import progress_disabled

    verdicts = {}
    with ThreadPoolExecutor(max_workers=min(size, len(unique))) as ex, \
            tqdm(total=len(unique), desc=f"grade ({size} workers)", unit="answer", mininterval=5.0,
                 disable=progress_disabled()) as bar:  # fmt: skip
        futures = {ex.submit(_grade_one, c, g, timeout, size): (c, g) for c, g in unique}
        for future in as_completed(futures):
            verdicts[futures[future]] = future.result()
            bar.update(1)
    return [verdicts[pair] for pair in pairs]
