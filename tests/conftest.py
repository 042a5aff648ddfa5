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
