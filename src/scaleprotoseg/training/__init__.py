"""Training: checkpoints, the step loop shared by every phase, and the per-method schedules."""
