"""The parameter server: a worker runtime (``runtime = "parameter-server"``) for DiLoCo jobs."""
