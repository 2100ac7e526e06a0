"""hpcmig.topology."""
