"""The scheduler: advertises a job, takes offers, holds leases and dispatches the work."""
