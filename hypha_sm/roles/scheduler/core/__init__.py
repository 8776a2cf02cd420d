"""The scheduler's pure core: its plan, records, events, effects, machines' code and reducer.

Same rules as ``hypha_sm.core``: no I/O, no clock, no randomness; time and ids are inputs.
"""
