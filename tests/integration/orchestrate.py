"""The orchestrator the fault-injection tests SIGKILL: the real state machines over AgentOps.

    python -m tests.integration.orchestrate migrate JSON
    python -m tests.integration.orchestrate recover JSON

JSON (the text, or a file holding it): `{"vcluster", "port", "munge_socket", "journal",
"spec"}` (`spec`: a MigrationSpec, for migrate; see agent_nodes.AgentNodes.orchestrator_args).
`migrate` runs `hpcmig.controller.migration.migrate`, `recover` runs
`hpcmig.controller.recovery.recover`, both with the faults `HPCMIG_FAULT` names
(`hpcmig.controller._machine.env_faults`), against the agents of the job's nodes, as hpcmigd
does. Prints the outcomes as a JSON list; exit 0 when each is done or rolled back.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Any

from hpcmig.controller._machine import env_faults
from hpcmig.controller.agentops import AgentOps
from hpcmig.controller.journal import Journal
from hpcmig.controller.migration import MigrationSpec, migrate
from hpcmig.controller.recovery import recover
from hpcmig.vcluster import VCluster


def _load(text: str) -> dict[str, Any]:
    if not text.lstrip().startswith("{"):
        with open(text, encoding="utf-8") as fh:
            text = fh.read()
    data: dict[str, Any] = json.loads(text)
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.integration.orchestrate")
    parser.add_argument("cmd", choices=("migrate", "recover"))
    parser.add_argument("json", help="the arguments as JSON text, or a file holding them")
    args = parser.parse_args(argv)
    data = _load(args.json)
    vc = VCluster.from_json(data["vcluster"])
    ops = AgentOps(vc, vc.node_addrs, int(data["port"]), data["munge_socket"])
    fault = env_faults()
    with Journal(data["journal"]) as journal:
        if args.cmd == "migrate":
            outcomes = [migrate(journal, ops, MigrationSpec.from_json(data["spec"]), fault)]
        else:
            outcomes = recover(journal, ops, fault=fault)
    print(json.dumps([asdict(o) for o in outcomes]))
    return 0 if all(o.state in ("done", "rolled_back") for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
