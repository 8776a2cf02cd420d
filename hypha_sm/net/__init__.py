"""The network shell: NNG sockets under trio, TLS, bulk transfers, the gateway role.

It moves signed envelopes (``hypha_sm.wire``) between nodes and never decides what a message
means: it opens envelopes, counts and logs rejections, and hands verified messages on.
"""
