"""hpcmig.checkpoint."""
