"""The event log: every input with its time, append-only, replayable (specs/event-log.md)."""
