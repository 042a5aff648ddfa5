"""Run recipes as subprocesses for the comparison scripts (``scripts/compare_*.py``): one command per run, its log
in the run's folder, runs whose results exist skipped."""

from __future__ import annotations

import os
from pathlib import Path


class RecipeRunner:
    """Runs recipes for a comparison script, each in its own process with its output streaming to the terminal,
    skipping a run whose result file exists (so an interrupted comparison resumes) unless ``rerun``; records wall
    times in ``timings``."""

    def __init__(self, root: str | os.PathLike, rerun: bool = False):
        self.root, self.rerun, self.timings = Path(root), rerun, {}

    def run(self, name: str, done_marker: str | os.PathLike, cmd: list[str]) -> None:
        import subprocess
        import sys
        import time

        done_marker = Path(done_marker)
        if done_marker.is_file() and not self.rerun:
            print(f"[compare] {name}: reusing {done_marker.parent}", flush=True)
            return
        print(f"[compare] {name}: {' '.join(cmd)}", flush=True)
        t0 = time.perf_counter()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        proc = subprocess.run([sys.executable, *cmd], cwd=self.root, env=env)
        if proc.returncode:
            raise SystemExit(f"[compare] {name} failed with exit status {proc.returncode}")
        self.timings[name] = round(time.perf_counter() - t0, 1)
        print(f"[compare] {name}: done in {self.timings[name]:.0f} s", flush=True)
