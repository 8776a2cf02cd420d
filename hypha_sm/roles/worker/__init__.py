"""The worker: evaluates advertisements, prices and offers, holds leases, runs jobs."""
