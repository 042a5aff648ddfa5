"""Import layering of llmpost, checked statically (ast only: nothing of llmpost is imported, no torch needed).

Groups are the first dotted component after ``llmpost`` (llmpost.trainers.unlearn -> "trainers"). Layers, top to bottom:

    rank 4  cli
    rank 3  pipeline, report, runner
    rank 2  trainers, benchmarks
    rank 1  losses, rewards, generation, data, eval, grading
    rank 0  config, models, ops, utils, epochs

1. A module may import any module of a strictly lower rank; at equal rank only the edges in SAME_RANK_ALLOWED.
   Imports within one group are fine. The root module (llmpost/__init__.py) imports nothing of llmpost.
2. losses imports only ops and utils (plus losses). 3. llmpost.benchmarks.<a>.* never imports
   llmpost.benchmarks.<b>.* for another benchmark b (llmpost.benchmarks.args and the package __init__ are shared).
4. Nothing in llmpost/ imports llmpost.cli (except cli itself), recipes or scripts. 5. No import cycles.

Every import counts: top level, inside functions, under ``if TYPE_CHECKING:``, and importlib.import_module("literal").
Relative imports are resolved; ``from llmpost.eval import shard`` is an import of llmpost.eval.shard when that file
exists, otherwise of llmpost.eval (the package's __init__.py). A new group goes into LAYERS and SAME_RANK_ALLOWED.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

LAYERS = {
    4: ["cli"],
    3: ["pipeline", "report", "runner"],
    2: ["trainers", "benchmarks"],
    1: ["losses", "rewards", "generation", "data", "eval", "grading"],
    0: ["config", "models", "ops", "utils", "epochs"],
}
RANK = {group: rank for rank, groups in LAYERS.items() for group in groups}
# Allowed imports between different groups of the same rank (importer -> importable groups). One table; edit here.
SAME_RANK_ALLOWED = {
    "config": {"utils", "models"}, "models": {"utils"}, "ops": set(), "utils": set(), "epochs": set(),
    "losses": set(), "grading": set(), "data": set(), "generation": {"data"},
    "eval": {"data", "generation", "grading"}, "rewards": {"generation", "grading", "losses"},
    "trainers": set(), "benchmarks": set(),
    "pipeline": set(), "report": set(), "runner": set(),
    "cli": set(),
}
LOSSES_MAY_IMPORT = {"losses", "ops", "utils"}
BENCHMARKS_SHARED = {"args"}  # llmpost.benchmarks.<name> modules every benchmark may import
FORBIDDEN_TOP = {"recipes", "scripts"}


def discover(root: Path, package: str) -> dict[str, Path]:
    """Module name -> file, for every .py under root/package (a package is its __init__.py)."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """(absolute module name, line) for every import anywhere in the file, relative ones resolved."""
    is_pkg = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append((alias.name, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_pkg else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                sub = f"{base}.{alias.name}"
                is_module = sub in modules or any(m.startswith(sub + ".") for m in modules)
                found.append((sub if is_module else base, node.lineno))
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")):
            found.append((node.args[0].value, node.lineno))
    return found


def rule_violation(src: str, dst: str, package: str) -> str | None:
    """Why src may not import dst (both inside package, groups known), as a message tail, or None."""
    s, d = src.split(".")[1:], dst.split(".")[1:]
    if not s:
        return f": the root package module must import nothing of {package}"
    if d and d[0] == "cli" and s[0] != "cli":
        return f": only {package}/cli.py may import {package}.cli"
    if not d or s[0] == d[0]:  # the root module (it imports nothing), or within one group
        if s[0] == "benchmarks" and len(s) > 1 and len(d) > 1 and s[1] != d[1] and d[1] not in BENCHMARKS_SHARED:
            return f": benchmark {s[1]!r} imports benchmark {d[1]!r}; share code via {package}.benchmarks.args or lower"
        return None
    if s[0] == "losses" and d[0] not in LOSSES_MAY_IMPORT:
        return f": losses may import only {package}.ops and {package}.utils"
    rs, rd = RANK[s[0]], RANK[d[0]]
    if rd > rs:
        return f" ({s[0]}, rank {rs} -> {d[0]}, rank {rd}): upward import"
    if rd == rs and d[0] not in SAME_RANK_ALLOWED[s[0]]:
        allowed = sorted(SAME_RANK_ALLOWED[s[0]]) or "none"
        return f" ({s[0]}, rank {rs} -> {d[0]}, rank {rd}): same-rank import not in SAME_RANK_ALLOWED ({allowed})"
    return None


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each as a sorted list."""
    index, low, stack, sccs = {}, {}, [], []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            at = stack.index(v)
            scc, stack[at:] = stack[at:], []
            if len(scc) > 1:
                sccs.append(sorted(scc))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(sccs)


def check_layout(root: Path, package: str) -> list[str]:
    """All layering violations of root/package, as readable messages (empty when the layout is clean)."""
    modules = discover(root, package)
    violations, graph = [], {m: set() for m in modules}
    unknown = {m.split(".")[1] for m in modules if "." in m} - set(RANK)
    for module, path in modules.items():
        rel = path.relative_to(root).as_posix()
        try:
            found = imports_of(module, path, modules)
        except SyntaxError as e:
            violations.append(f"{rel}: cannot parse ({e})")
            continue
        for name, line in found:
            top = name.split(".")[0]
            if top in FORBIDDEN_TOP:
                violations.append(f"{rel}:{line} imports {name}: {package}/ must not import {top}/")
            if top != package:
                continue
            if name not in modules and not any(m.startswith(name + ".") for m in modules):
                violations.append(f"{rel}:{line} imports {name}: no such module under {package}/ (moved?)")
                continue
            if name != module and name in modules:
                graph[module].add(name)
            if not {n.split(".")[1] for n in (module, name) if "." in n} & unknown:
                why = rule_violation(module, name, package)
                if why:
                    violations.append(f"{rel}:{line} imports {name}{why}")
    for group in sorted(unknown):
        violations.append(f"{package}.{group} is in no layer: add {group!r} to LAYERS and SAME_RANK_ALLOWED "
                          "in tests/test_layout.py")
    for scc in find_cycles(graph):
        violations.append(f"import cycle among {len(scc)} modules: {', '.join(scc)}")
    return violations


def test_real_llmpost_layers_and_no_cycles():
    violations = check_layout(ROOT, "llmpost")
    assert not violations, f"{len(violations)} layering violation(s):\n" + "\n".join(violations)


def test_layer_tables_are_consistent():
    assert set(SAME_RANK_ALLOWED) == set(RANK), "every group needs a SAME_RANK_ALLOWED entry"
    for group, allowed in SAME_RANK_ALLOWED.items():
        assert all(RANK[a] == RANK[group] for a in allowed), f"{group}: same-rank entries must share its rank"


# ---- self-tests of the checker on synthetic packages ------------------------------------------------------------

CLEAN = {
    "__init__.py": '"""root: imports nothing of the package."""',
    "utils.py": "import os",
    "ops.py": "import torch",
    "models.py": "from fakepkg.utils import x",
    "config.py": "import fakepkg.models\nfrom . import utils",
    "losses/__init__.py": "from .core import loss",
    "losses/core.py": "from ..ops import f\nfrom fakepkg.utils import g",
    "data/__init__.py": "",
    "data/rows.py": "from fakepkg.config import C",
    "eval/__init__.py": "from . import metrics",
    "eval/metrics.py": "from fakepkg.data import rows\nfrom fakepkg.eval import shard",
    "eval/shard.py": "",
    "trainers/base.py": "from fakepkg.losses import core",
    "trainers/unlearn.py": "from .base import Trainer\nfrom fakepkg.eval.metrics import m",
    "benchmarks/__init__.py": "",
    "benchmarks/args.py": "",
    "benchmarks/tofu/__init__.py": "",
    "benchmarks/tofu/run.py": "from ..args import parse\nfrom fakepkg.benchmarks import args, tofu\nimport fakepkg",
    "benchmarks/muse/run.py": "from fakepkg.benchmarks.args import parse\nfrom fakepkg.eval.metrics import m",
    "pipeline.py": "from fakepkg.benchmarks.tofu import run",
    "cli.py": "from fakepkg import pipeline, report\nimport fakepkg.cli",
    "report.py": "",
}


def make_tree(tmp_path: Path, overrides: dict[str, str]) -> Path:
    for rel, text in {**CLEAN, **overrides}.items():
        path = tmp_path / "fakepkg" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return tmp_path


def test_checker_accepts_clean_tree(tmp_path):
    assert check_layout(make_tree(tmp_path, {}), "fakepkg") == []


LAZY = """
from typing import TYPE_CHECKING
if TYPE_CHECKING:
    from fakepkg.eval.metrics import m
def f():
    import fakepkg.trainers.base
"""

CASES = {  # name: (files to add or replace, fragments each found in some violation, violation count)
    "upward": ({"data/rows.py": "from fakepkg.trainers.base import T"},
               ["fakepkg/data/rows.py:1 imports fakepkg.trainers.base (data, rank 1 -> trainers, rank 2): upward"], 1),
    "same_rank": ({"data/extra.py": "from fakepkg.eval import shard"}, ["(data, rank 1 -> eval, rank 1): same-"], 1),
    "losses_to_data": ({"losses/core.py": "import fakepkg.data.rows"}, ["losses may import only fakepkg.ops"], 1),
    "losses_to_config": ({"losses/core.py": "from fakepkg import config"}, ["imports fakepkg.config: losses may"], 1),
    "cross_benchmark": ({"benchmarks/muse/run.py": "from fakepkg.benchmarks.tofu.run import x"},
                        ["benchmark 'muse' imports benchmark 'tofu'"], 1),
    "lazy_and_type_checking": ({"epochs.py": LAZY}, ["epochs.py:4 imports fakepkg.eval.metrics (epochs, rank 0",
                                                     "epochs.py:6 imports fakepkg.trainers.base (epochs, rank 0"], 2),
    "relative_up": ({"data/rows.py": "from ..benchmarks.tofu import run"},
                    ["data/rows.py:1 imports fakepkg.benchmarks.tofu.run (data, rank 1 -> benchmarks"], 1),
    "relative_submodule": ({"generation/sample.py": "from ..eval import shard"},
                           ["generation/sample.py:1 imports fakepkg.eval.shard (generation, rank 1 -> eval"], 1),
    "cycle": ({"trainers/base.py": "from . import extra", "trainers/extra.py": "from fakepkg.trainers import unlearn"},
              ["cycle among 3 modules: fakepkg.trainers.base, fakepkg.trainers.extra, fakepkg.trainers.unlearn"], 1),
    "cli_import": ({"epochs.py": "def main():\n    from fakepkg.cli import main"},
                   ["epochs.py:2 imports fakepkg.cli: only fakepkg/cli.py may import"], 1),
    "namespace_pkg": ({"eval/shard.py": "from fakepkg import trainers"}, ["imports fakepkg.trainers (eval, rank 1"], 1),
    "recipes_import": ({"ops.py": "import recipes.tofu"}, ["ops.py:1 imports recipes.tofu: fakepkg/ must not"], 1),
    "root_imports": ({"__init__.py": "from .utils import x"}, ["__init__.py:1 imports fakepkg.utils: the root"], 1),
    "unknown_group": ({"methods/x.py": "from fakepkg import ops"}, ["fakepkg.methods is in no layer: add 'me"], 1),
    "stale_import": ({"data/rows.py": "from fakepkg.methods.dpo import loss"}, ["no such module under fakepkg/"], 1),
    "unknown_group_no_imports": ({"methods/__init__.py": ""}, ["fakepkg.methods is in no layer"], 1),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_checker_catches(tmp_path, case):
    files, fragments, count = CASES[case]
    violations = check_layout(make_tree(tmp_path, files), "fakepkg")
    assert len(violations) == count, violations
    for fragment in fragments:
        assert any(fragment in v for v in violations), (fragment, violations)
