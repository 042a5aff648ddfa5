"""The math-verify call itself, and the grading worker's loop: this file is what :mod:`llmpost.grading.verify` runs in
each worker subprocess (as a script, so that a worker imports math-verify and nothing of llmpost).

Protocol: the worker prints ``ready`` once math-verify is imported, then answers each ``[gold, completion, timeout]``
JSON line on stdin with ``1`` (correct) or ``0``, until stdin closes. Each job caps the worker's CPU time
(``RLIMIT_CPU``), so an orphaned worker stuck in C code is killed by the kernel.
"""

from __future__ import annotations

import json
import math
import os
import sys


def verify_here(gold: str, completion: str, seconds: int | None) -> bool:
    """math-verify in this process: ``verify(parse(gold), parse(completion))``, gold first, default extraction.

    The gold is parsed as ``\\boxed{gold}``: a bare gold string is parsed badly (``6 - 5i`` -> 5, ``p - q`` -> nothing),
    and the boxed form has the highest extraction priority and matches nested braces whole; ``$gold$`` parses identically
    on all 500 MATH-500 answers, but breaks on golds holding ``$``. ``seconds`` feeds math-verify's signal timeouts.
    """
    try:
        from math_verify import parse, verify

        gold_parsed = parse("\\boxed{" + gold + "}", parsing_timeout=seconds)
        pred_parsed = parse(completion, parsing_timeout=seconds)
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=seconds))
    except Exception:
        return False


def main() -> None:
    """Grading worker loop: one ``[gold, completion, timeout]`` JSON line in, ``1``/``0`` out, until stdin closes."""
    import logging
    import resource

    out = os.fdopen(os.dup(1), "w", encoding="ascii", buffering=1)
    os.dup2(2, 1)  # whatever sympy or math-verify print must not corrupt the protocol
    logging.disable(logging.CRITICAL)  # math-verify logs every timeout with the whole input
    from math_verify import parse, verify  # noqa: F401  (imported once, before "ready")

    out.write("ready\n")
    for line in sys.stdin:
        gold, completion, timeout = json.loads(line)
        try:  # an orphaned worker stuck in C code is killed by the kernel
            usage = resource.getrusage(resource.RUSAGE_SELF)
            hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
            soft = int(usage.ru_utime + usage.ru_stime + timeout) + 10
            resource.setrlimit(resource.RLIMIT_CPU, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))
        except (ValueError, OSError):
            pass
        out.write("1\n" if verify_here(gold, completion, max(1, math.ceil(timeout))) else "0\n")


if __name__ == "__main__":
    main()
