"""hpcmig.health."""
