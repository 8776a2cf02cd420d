"""Kept for job programs written against hypha-sm 0.1: the client now lives in ``hypha_sm.sdk``."""

from hypha_sm.sdk.bridge_client import BridgeClient, BridgeClientError

__all__ = ["BridgeClient", "BridgeClientError"]
