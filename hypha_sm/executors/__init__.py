"""Executors shipped with the project (run by a worker's process runtime)."""
