"""The wire layer: message types, codec, identities and signed envelopes. Bytes in, messages out.

Pure like the core: no sockets, no clock reads (time is passed in), no entropy except where a
caller hands it in (message ids, new keys are made by the shell). See specs/protocol.md.
"""
