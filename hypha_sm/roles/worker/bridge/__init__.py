"""The job bridge: HTTP/1.1 on the job's Unix socket, for the executor (specs/bridge.md).

``app.JobBridge`` serves the routes; ``interfaces`` holds what it is given (fetch, send and
receive hooks, limits) and its error type; ``progress`` the original's JSON forms of a report
and its reply; ``sse`` the stream of received files; ``openapi`` the document it serves.
"""

from hypha_sm.roles.worker.bridge.app import JobBridge, open_inside
from hypha_sm.roles.worker.bridge.interfaces import (
    BridgeError,
    BridgeLimits,
    FetchedFile,
    FetchPeers,
    FetchSlice,
    ReceivedFile,
    ReceiveFiles,
    SendFile,
    SendProgress,
    error_response,
)

__all__ = [
    "BridgeError",
    "BridgeLimits",
    "FetchPeers",
    "FetchSlice",
    "FetchedFile",
    "JobBridge",
    "ReceiveFiles",
    "ReceivedFile",
    "SendFile",
    "SendProgress",
    "error_response",
    "open_inside",
]
