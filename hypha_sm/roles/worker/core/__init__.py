"""The worker's pure core: its state, records, events, effects, policy, reducer and machines.

Same rules as ``hypha_sm.core``: no I/O, no clock, no randomness; time and ids are inputs.
"""
