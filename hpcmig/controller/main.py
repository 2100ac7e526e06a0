"""`hpcmigd`: the cluster controller (state, policy, crash-safe migrations).

Only its command-line surface exists so far; the journaled migration state machines arrive with
live migration. It refuses to start rather than pretend to run.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hpcmigd", description="hpcmig cluster controller")
    parser.parse_args(argv)
    print("hpcmigd: error: the controller is not available in this version "
          "(it arrives with live migration)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
