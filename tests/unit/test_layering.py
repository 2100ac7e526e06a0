"""The import rules of DESIGN.md ("an import that runs up is a bug"), held statically.

Layers, top to bottom: cli -> controller -> agent -> runtime / network / checkpoint -> Slurm
adapter, topology, parsing (pure). Every `import` of every module is read with `ast`
(function-level imports included, since the CLI imports lazily), so a rule breaks here
whatever code path would load it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import hpcmig

ROOT = Path(hpcmig.__file__).parent

# package (or module) -> packages it must never import
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "hpcmig.agent": ("hpcmig.controller", "hpcmig.cli", "hpcmig.hooks", "hpcmig.slurm",
                     "hpcmig.testbed"),
    "hpcmig.runtime": ("hpcmig.agent", "hpcmig.controller", "hpcmig.cli", "hpcmig.hooks",
                       "hpcmig.slurm"),
    "hpcmig.network": ("hpcmig.agent", "hpcmig.controller", "hpcmig.cli", "hpcmig.hooks",
                       "hpcmig.slurm"),
    "hpcmig.checkpoint": ("hpcmig.agent", "hpcmig.controller", "hpcmig.cli", "hpcmig.hooks",
                          "hpcmig.slurm"),
    "hpcmig.slurm": ("hpcmig.agent", "hpcmig.controller", "hpcmig.cli", "hpcmig.hooks",
                     "hpcmig.checkpoint", "hpcmig.network", "hpcmig.runtime"),
    "hpcmig.topology": ("hpcmig.slurm", "hpcmig.runtime", "hpcmig.agent", "hpcmig.controller",
                        "hpcmig.cli", "hpcmig.network", "hpcmig.checkpoint", "hpcmig._proc"),
    "hpcmig.controller": ("hpcmig.cli", "hpcmig.hooks", "hpcmig.testbed"),
    "hpcmig.hooks": ("hpcmig.controller", "hpcmig.cli", "hpcmig._proc"),
    "hpcmig.vcluster": ("hpcmig.agent", "hpcmig.controller", "hpcmig.cli", "hpcmig.slurm"),
    "hpcmig.hostlist": ("hpcmig.slurm", "hpcmig._proc"),
    # node health: samples and rules are pure, read by the agent and judged by hpcmigd
    **{f"hpcmig.health.{m}": ("hpcmig.agent", "hpcmig.controller", "hpcmig.cli",
                              "hpcmig.hooks", "hpcmig.slurm", "hpcmig.testbed")
       for m in ("sample", "probes", "checks", "rules")},
    # the application-level checkpoint library runs inside users' MPI programs
    "hpcmig.ckpt": ("hpcmig.agent", "hpcmig.controller", "hpcmig.cli", "hpcmig.hooks",
                    "hpcmig.slurm", "hpcmig.testbed", "hpcmig.runtime", "hpcmig.network",
                    "hpcmig.checkpoint", "hpcmig.health"),
}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return found


def under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations() -> list[str]:
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        name = module_name(path)
        for scope, banned in FORBIDDEN.items():
            if not under(name, scope):
                continue
            for imported in sorted(imports_of(path)):
                hit = next((b for b in banned if under(imported, b)), None)
                if hit:
                    bad.append(f"{name} imports {imported} ({scope} must not import {hit})")
    return bad


def test_no_import_runs_up_the_layers() -> None:
    assert violations() == []


def test_the_rule_checker_sees_a_violation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    """The checker itself can fail: a planted upward import is reported."""
    fake = tmp_path / "hpcmig"
    (fake / "agent").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "agent" / "__init__.py").write_text("")
    (fake / "agent" / "x.py").write_text("def f():\n    from hpcmig.controller import y\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", fake)
    assert violations() == ["hpcmig.agent.x imports hpcmig.controller "
                            "(hpcmig.agent must not import hpcmig.controller)",
                            "hpcmig.agent.x imports hpcmig.controller.y "
                            "(hpcmig.agent must not import hpcmig.controller)"]


@pytest.mark.parametrize(("module", "absent"), [
    ("hpcmig.topology.mapper", ("hpcmig.slurm", "hpcmig._proc", "hpcmig.runtime")),
    ("hpcmig.topology.slurmconf", ("hpcmig.slurm", "hpcmig._proc")),
    ("hpcmig.agent.main", ("hpcmig.controller", "hpcmig.slurm")),
])
def test_importing_a_module_loads_nothing_above_it(module: str, absent: tuple[str, ...]) -> None:
    code = (f"import sys, {module}\n"
            "print('\\n'.join(m for m in sys.modules if m.startswith('hpcmig')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout.split()
    assert [m for m in loaded if any(under(m, a) for a in absent)] == []
