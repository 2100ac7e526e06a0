"""hpcmig.network."""
