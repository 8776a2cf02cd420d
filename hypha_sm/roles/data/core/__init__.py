"""The data node's pure core: plan, events, effects, state, machines' code, reducer, role.

Same rules as ``hypha_sm.core``: no I/O, no clock, no randomness; time is an input.
"""
