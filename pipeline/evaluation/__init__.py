"""What ``evaluate`` measures and how each metric is computed."""
