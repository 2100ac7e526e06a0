"""hpcmig.health sits below the agent and the controller: nothing in it imports them, the
controller's client in `hpcmig-healthcheck`'s main excepted; the rules and the configuration
load nothing with effects."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import hpcmig.health

HEALTH = Path(hpcmig.health.__file__).parent
ABOVE = ("hpcmig.controller", "hpcmig.agent", "hpcmig.cli", "hpcmig.slurm", "hpcmig.hooks",
         "hpcmig.testbed", "hpcmig.runtime", "hpcmig.network", "hpcmig.checkpoint")
# (module, imported) allowed, and only inside a function
LAZY_ALLOWED = {("hpcmig.health.healthcheck", "hpcmig.controller.client")}


def upward_imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level) for every import of hpcmig's upper layers."""
    tree = ast.parse(path.read_text(), str(path))
    lazy: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lazy |= {id(n) for n in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        for name in names:
            if any(name == a or name.startswith(a + ".") for a in ABOVE):
                found.append((name, id(node) not in lazy))
    return found


def test_health_imports_nothing_above_it() -> None:
    bad = []
    for path in sorted(HEALTH.glob("*.py")):
        module = f"hpcmig.health.{path.stem}".removesuffix(".__init__")
        for name, top in upward_imports(path):
            if top or (module, name) not in LAZY_ALLOWED:
                bad.append(f"{module} imports {name}" + (" at module level" if top else ""))
    assert bad == []


def test_the_checker_sees_a_module_level_import(tmp_path: Path) -> None:
    f = tmp_path / "x.py"
    f.write_text("from hpcmig.controller.client import ControllerClient\n"
                 "def main():\n    import hpcmig.agent.rpc\n")
    assert upward_imports(f) == [("hpcmig.controller.client", True),
                                 ("hpcmig.agent.rpc", False)]


def loaded(code: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport sys\n"
                          "print('\\n'.join(m for m in sys.modules if m.startswith('hpcmig')))"],
                         capture_output=True, text=True, check=True).stdout
    return out.split()


def test_importing_the_health_package_loads_nothing_above_it() -> None:
    mods = loaded("import hpcmig.health.healthcheck, hpcmig.health.rules, "
                  "hpcmig.health.sample")
    assert [m for m in mods if m.startswith(ABOVE)] == []


def test_rules_and_the_configuration_load_nothing_with_effects() -> None:
    mods = loaded("import hpcmig.config, hpcmig.health.rules")
    assert sorted(mods) == ["hpcmig", "hpcmig.config", "hpcmig.errors", "hpcmig.health",
                            "hpcmig.health.rules"]
