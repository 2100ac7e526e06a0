"""hpcmig.testbed."""
