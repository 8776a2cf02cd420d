"""What every role's shell shares: telemetry set-up (and, next, the loop and start-up)."""
