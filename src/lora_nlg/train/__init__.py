"""Training: configuration, optimizer and schedules, the loop, resumable state, the run log."""
