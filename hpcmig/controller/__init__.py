"""hpcmig.controller."""
