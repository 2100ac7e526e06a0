"""Deterministic MPI workloads used by the demo, the tests and the benchmarks.

Each workload sets up state, runs, and prints a checksum that is computed independently of
MPI by `expected_*` functions, so a run (disturbed by migration or not) passes or fails
explicitly (the habit of CRIU's zdtm tests).
"""
