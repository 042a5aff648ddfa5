"""Shared fixtures. Data and the tiny model come from ../shared (as in CI); missing data is a failure, not a skip."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
TOFU_DIR = SHARED / "data" / "tofu"
TINY_MODEL = SHARED / "models" / "stories260K"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")


def pytest_sessionstart(session):
    missing = [str(p) for p in (TOFU_DIR / "forget10.jsonl", TINY_MODEL / "config.json") if not p.exists()]
    if missing:
        raise pytest.UsageError(f"test data missing (expected ../shared beside the repository): {missing}")


@pytest.fixture(scope="module")
def one_thread():
    """The 260K-parameter model runs ~10x faster on one thread than on two contended ones; restored afterwards.
    Test modules that run it use ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tokenizer():
    from llmpost.models import load_tokenizer

    return load_tokenizer(str(TINY_MODEL))


# ----- launching a recipe on several CPU processes (the tier-3 distributed tests) ----------------------------------

# accelerate config, recipe flags, whether accelerate runs with ACCELERATE_USE_CPU. DeepSpeed must not see a CPU flag
# (accelerate then drops DeepSpeed altogether), and needs gloo on CPU.
CPU_BACKENDS = {"ddp": ("configs/accelerate/cpu_ddp.yaml", {}, True),
                "zero3": ("configs/accelerate/cpu_zero3.yaml", {"ddp_backend": "gloo", "use_cpu": "false"}, False)}


def accelerate_cmd(config: str, script, args: list[str], processes: int = 2) -> list[str]:
    """``accelerate launch`` of ``script`` on ``processes`` processes with a free main-process port."""
    import socket
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config, "--num_processes",
            str(processes), "--main_process_port", str(port), str(script), *args]  # fmt: skip


def run_dumped(cmd: list, dump: Path, world: int, use_cpu: bool = True) -> list[dict]:
    """Run a recording helper (``tests/*_dist_helper.py``) with ``$LLMPOST_DIST_DUMP_DIR=dump``; every rank's
    ``rank{R}.json`` record with its ``rank{R}.pt`` parameters under ``"state"``, in rank order."""
    import json
    import subprocess

    import torch

    env = dict(os.environ, LLMPOST_DIST_DUMP_DIR=str(dump), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", TQDM_DISABLE="1")  # fmt: skip
    env.pop("ACCELERATE_USE_CPU", None)
    if use_cpu:
        env["ACCELERATE_USE_CPU"] = "true"
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-5000:]}"
    files = sorted(p.name for p in dump.glob("rank*.json"))
    assert files == [f"rank{r}.json" for r in range(world)]
    return [json.loads((dump / f"rank{r}.json").read_text()) | {"state": torch.load(dump / f"rank{r}.pt")}
            for r in range(world)]  # fmt: skip


def assert_results_close(a, b, path: str = "", rel: float = 1e-5, abs_: float = 1e-7) -> None:
    """Two result files (parsed JSON) agree: the same keys, lists and strings, numbers within float32 noise."""
    import pytest

    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_results_close(a[k], b[k], f"{path}/{k}", rel, abs_)
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_results_close(x, y, f"{path}/{i}", rel, abs_)
    elif isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, rel=rel, abs=abs_, nan_ok=True), path
    else:
        assert a == b, path
