"""Small helpers: atomic result files, output-directory guard, string enums and their config check."""

from __future__ import annotations

import json
import math
import numbers
import os
import tempfile
from enum import Enum
from pathlib import Path

try:
    from enum import StrEnum
except ImportError:  # Python 3.10

    class StrEnum(str, Enum):
        """A string-valued enum whose ``str()`` is its value (``enum.StrEnum`` from Python 3.11)."""

        def __str__(self) -> str:
            return str(self.value)


def parse_enum(name: str, value, enum: type[Enum]):
    """``enum(value)``, or ``ValueError("name: value is not one of [...]")`` naming the config key ``name``: the
    check every config dataclass runs on its enum fields in ``__post_init__``."""
    try:
        return enum(value)
    except ValueError:
        raise ValueError(f"{name}: {value!r} is not one of {[e.value for e in enum]}") from None


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically: a temporary file in the same directory, fsync, then ``os.replace``.

    A reader never sees a half-written file, and an interrupted write leaves any previous file untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    """``json.dump`` ``obj`` (indented) to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


class OutputDirError(FileExistsError):
    """The output directory already holds results and overwriting was not asked for."""


def check_output_dir(output_dir: str | os.PathLike, overwrite: bool, markers=("*.json", "*.safetensors", "checkpoint-*")) -> None:
    """Refuse to write into a directory that already holds results, unless ``overwrite``.

    Resuming (``resume_from_checkpoint``) is the caller's business: pass ``overwrite=True`` for it.
    """
    out = Path(output_dir)
    if overwrite or not out.exists():
        return
    found = sorted({p.name for m in markers for p in out.glob(m)})
    if found:
        raise OutputDirError(
            f"output_dir {str(out)!r} already holds results ({', '.join(found[:5])}{', ...' if len(found) > 5 else ''}); "
            "choose another output_dir, pass --overwrite_output_dir true, or --resume_from_checkpoint to continue"
        )


class Ema:
    """Exponential moving average ``v <- decay v + (1 - decay) x``; the first ``update`` sets ``v = x`` (no zero-init
    bias). ``decay`` in [0, 1) (0: the latest value). ``value`` is None before the first update."""

    def __init__(self, decay: float):
        self.decay = check_rate("decay", decay)
        self.value: float | None = None

    def update(self, x: float) -> float:
        x = float(x)
        if not math.isfinite(x):
            raise ValueError(f"Ema.update needs a finite value, got {x!r}")
        self.value = x if self.value is None else self.decay * self.value + (1.0 - self.decay) * x
        return self.value


class RetainLogError(ValueError):
    """A retain-model log is missing, unreadable, or lacks a needed entry. The message names the file and key."""


def progress_disabled() -> bool:
    """Whether the ``TQDM_DISABLE`` environment variable turns progress bars off (any value but ``""``/``0``/``false``)."""
    return os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false")


class DataError(ValueError):
    """A split, file or column is missing or malformed. The message names which and where."""


def check_rate(name: str, value: float) -> float:
    """``value`` as a float if it is a finite rate in [0, 1), else ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must be a rate in [0, 1), got {name}={value!r}")
    return float(value)
