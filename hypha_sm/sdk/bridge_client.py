"""A small synchronous client for the job bridge, for executors (specs/bridge.md §8).

Depends on httpx only, so an executor can import this module without the rest of the node::

    from hypha_sm.sdk.bridge_client import BridgeClient

    with BridgeClient("/path/to/bridge.sock") as bridge:
        [artifact] = bridge.fetch_uri("https://example.org/model.bin")
        reply = bridge.status({"status": {"batch_size": 32}})
        bridge.send("update.bin", ["12D3KooW..."], purpose="pseudo-gradient")
        for event in bridge.receive("incoming"):
            ...
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

import httpx

BASE_URL = "http://hypha"


class BridgeClientError(Exception):
    """The bridge answered with an error status (or the event stream reported an error)."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail


def _raise_for(reply: httpx.Response) -> None:
    if reply.is_success:
        return
    reply.read()
    try:
        body = reply.json()
        code, detail = str(body["code"]), str(body["detail"])
    except (ValueError, KeyError, TypeError):
        code, detail = "http_error", reply.text
    raise BridgeClientError(reply.status_code, code, detail)


def iter_sse(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """``(event, data)`` pairs of a server-sent event stream; comments are skipped."""
    event, data = "message", list[str]()
    for line in lines:
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                data.append(value)
            elif name == "event":
                event = value
    if data:
        yield event, "\n".join(data)


class BridgeClient:
    """The job bridge over its Unix socket. Calls block until the bridge answers."""

    def __init__(self, socket_path: str | os.PathLike[str], *, timeout: float | None = None):
        self.socket_path = os.fspath(socket_path)
        self._http = httpx.Client(
            transport=httpx.HTTPTransport(uds=self.socket_path),
            base_url=BASE_URL,
            timeout=timeout,
        )

    def __enter__(self) -> BridgeClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def _post(self, path: str, body: object) -> Any:
        reply = self._http.post(path, json=body)
        _raise_for(reply)
        return reply.json()

    def fetch(self, resource: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Fetch a resource into ``artifacts/``: ``[{"path", "size", "sha256"}, ...]``."""
        result: list[dict[str, Any]] = self._post("/resources/fetch", dict(resource))
        return result

    def fetch_uri(self, uri: str) -> list[dict[str, Any]]:
        """Fetch one http(s):// or file:// URI into ``artifacts/``."""
        return self.fetch({"type": "uri", "value": uri})

    def fetch_slice(self, dataset: str) -> list[dict[str, Any]]:
        """Fetch the next slice of a dataset into ``artifacts/``."""
        return self.fetch({"type": "slice", "dataset": dataset})

    def send(self, path: str, peers: Sequence[str], purpose: str = "") -> dict[str, Any]:
        """Send a work-dir file to peers; returns ``{"path", "results": {peer: outcome}}``."""
        result: dict[str, Any] = self._post(
            "/resources/send", {"path": path, "peers": list(peers), "purpose": purpose}
        )
        return result

    def send_resource(self, resource: Mapping[str, Any], path: str) -> dict[str, Any]:
        """The original's send: ``{"resource": <peers reference>, "path": ...}``."""
        result: dict[str, Any] = self._post(
            "/resources/send", {"resource": dict(resource), "path": path}
        )
        return result

    def receive(
        self, path: str | None = None, peers: Sequence[str] | None = None
    ) -> Iterator[dict[str, Any]]:
        """Files ``peers`` (default: anyone) push into ``path`` (default ``incoming``).

        Each item is ``{"path", "size", "from_peer", "sha256"}``. Runs until the bridge closes
        the stream; an ``error`` event raises :class:`BridgeClientError`.
        """
        body: dict[str, Any] = {} if path is None else {"path": path}
        if peers is not None:
            body["peers"] = list(peers)
        with self._http.stream("POST", "/resources/receive", json=body) as reply:
            _raise_for(reply)
            for event, data in iter_sse(reply.iter_lines()):
                payload = json.loads(data)
                if event == "error":
                    raise BridgeClientError(
                        502, str(payload.get("code")), str(payload.get("detail"))
                    )
                yield payload

    def status(self, progress: object) -> dict[str, Any]:
        """Post a progress value; returns the scheduler's reply (``{"type": ...}``)."""
        result: dict[str, Any] = self._post("/status/send", progress)
        return result

    def openapi(self) -> dict[str, Any]:
        """The bridge's OpenAPI document."""
        reply = self._http.get("/openapi.json")
        _raise_for(reply)
        result: dict[str, Any] = reply.json()
        return result
