"""The roles a node can play, each a set of declared machines run by the same engine and loop.

A role brings its machines (``machines/<role>/``), its state (a ``hypha_sm.core.host.Host``),
its guards and actions, its events and effects, and a shell that turns the wire into events and
effects into I/O. Roles do not import each other.
"""
