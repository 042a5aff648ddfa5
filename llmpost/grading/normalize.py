"""MATH answer extraction and normalisation (the ``\\boxed{}`` answer, Hendrycks et al.'s string normalisation and
equivalence check)."""

from __future__ import annotations


# --------------------------------------------------------------------------------------------- answer extraction
def _match_brace(text: str, open_idx: int) -> int | None:
    """Index of the ``}`` closing the ``{`` at ``open_idx`` (escaped ``\\{``/``\\}`` do not count), or None."""
    depth, i = 0, open_idx
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def extract_boxed(text: str) -> str | None:
    """Content of the last top-level ``\\boxed{...}`` or ``\\fbox{...}`` in ``text`` (nested braces kept), or None.

    Source: ``last_boxed_only_string``/``remove_boxed`` of hendrycks/math. Deviations: the scan is brace-aware from
    the left, so ``\\boxed{\\boxed{a}}`` yields ``\\boxed{a}`` (the reference takes the last ``\\boxed`` occurrence);
    escaped braces ``\\{ \\}`` don't count; the space form ``\\boxed 5`` yields the token up to the next whitespace or
    ``$`` (the reference takes everything up to ``$``). None when the last box never closes (``\\boxed{`` at the end).
    """
    if not isinstance(text, str):
        return None
    found, i = None, 0
    while i < len(text):
        if text[i] != "\\":
            i += 1
            continue
        cmd = "\\boxed" if text.startswith("\\boxed", i) else "\\fbox" if text.startswith("\\fbox", i) else None
        if cmd is None:
            i += 2
            continue
        j = i + len(cmd)
        while j < len(text) and text[j] in " \t":
            j += 1
        if j < len(text) and text[j] == "{":
            close = _match_brace(text, j)
            if close is None:
                return None
            found, i = text[j + 1 : close], close + 1
        elif cmd == "\\boxed" and j > i + len(cmd) and j < len(text):
            end = j
            while end < len(text) and not text[end].isspace() and text[end] != "$":
                end += 1
            found, i = text[j:end], end
        else:
            i = j
    return found


# --------------------------------------------------------------------------------- Hendrycks string equivalence
def _fix_fracs(s: str) -> str:
    head, *parts = s.split("\\frac")
    out = [head]
    for part in parts:
        out.append("\\frac")
        if not part:
            raise ValueError("\\frac without arguments")
        if part[0] == "{":
            out.append(part)
        elif len(part) < 2:
            return s
        elif part[1] == "{":
            out.append("{" + part[0] + "}" + part[1:])
        else:
            out.append("{" + part[0] + "}{" + part[1] + "}" + part[2:])
    return "".join(out)


def _fix_a_slash_b(s: str) -> str:
    parts = s.split("/")
    if len(parts) != 2:
        return s
    try:
        a, b = int(parts[0]), int(parts[1])
    except ValueError:
        return s
    return f"\\frac{{{a}}}{{{b}}}" if s == f"{a}/{b}" else s


def _fix_sqrt(s: str) -> str:
    head, *parts = s.split("\\sqrt")
    out = [head]
    for part in parts:
        if not part:
            raise ValueError("\\sqrt without argument")
        out.append("\\sqrt" + part if part[0] == "{" else "\\sqrt{" + part[0] + "}" + part[1:])
    return "".join(out)


def strip_string(s: str) -> str:
    """Hendrycks MATH normalisation (``_strip_string`` of hendrycks/math ``modeling/math_equivalence.py``), reimplemented.

    In order: drop newlines, ``\\!``; ``\\\\`` -> ``\\``; ``tfrac``/``dfrac`` -> ``frac``; drop ``\\left``/``\\right``,
    degrees (``^{\\circ}``, ``^\\circ``), ``\\$``; cut units after ``\\text{ ``; drop ``\\%``; ``.5`` -> ``0.5``; drop a
    short ``x =`` prefix; ``\\sqrt2`` -> ``\\sqrt{2}``; drop spaces; ``\\frac12`` -> ``\\frac{1}{2}``; ``0.5`` ->
    ``\\frac{1}{2}``; ``a/b`` of integers -> ``\\frac{a}{b}``. Like the reference it raises (ValueError here) on
    malformed input (``\\frac``/``\\sqrt`` without argument, two ``\\text{ `` unit blocks); ``is_equiv`` then compares
    the raw strings. Deviations: none intended.
    """
    for old, new in (("\n", ""), ("\\!", ""), ("\\\\", "\\"), ("tfrac", "frac"), ("dfrac", "frac"), ("\\left", ""),
                     ("\\right", ""), ("^{\\circ}", ""), ("^\\circ", ""), ("\\$", "")):
        s = s.replace(old, new)
    if "\\text{ " in s:  # units, e.g. "5 \text{ cm}"
        parts = s.split("\\text{ ")
        if len(parts) != 2:
            raise ValueError("more than one \\text{ unit block")
        s = parts[0]
    s = s.replace("\\%", "").replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    sides = s.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:  # "x = 5", "k=5"
        s = sides[1]
    s = _fix_fracs(_fix_sqrt(s).replace(" ", ""))
    if s == "0.5":
        s = "\\frac{1}{2}"
    return _fix_a_slash_b(s)


def is_equiv(pred: str | None, gold: str) -> bool:
    """Hendrycks MATH ``is_equiv``: ``strip_string(pred) == strip_string(gold)``, raw equality if normalising fails.

    Deviation: ``pred`` None (no boxed answer) is False even when ``gold`` is None (the reference says True).
    """
    if not isinstance(pred, str) or not isinstance(gold, str):
        return False
    try:
        return strip_string(pred) == strip_string(gold)
    except (ValueError, IndexError):
        return pred == gold
