"""sevpeb cross-host migration trials (see docs/TRIALS.md)."""
