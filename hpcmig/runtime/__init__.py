"""hpcmig.runtime."""
