"""hpcmig.agent."""
