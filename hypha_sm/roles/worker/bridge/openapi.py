"""The bridge's OpenAPI document (served at ``/openapi.json``), kept beside the routes it describes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# -- OpenAPI ---------------------------------------------------------------------------------


def _obj(props: dict[str, Any], required: Sequence[str] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": list(required)}


_STR = {"type": "string"}
_INT = {"type": "integer", "minimum": 0}
_ERR = {"$ref": "#/components/schemas/Error"}


def _errors(*codes: int) -> dict[str, Any]:
    return {
        str(c): {"description": "error", "content": {"application/json": {"schema": _ERR}}}
        for c in codes
    }


def _json(schema: dict[str, Any], description: str = "ok") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def openapi_schema() -> dict[str, Any]:
    """The bridge's OpenAPI 3.1 document: every route, its request and reply shapes."""
    fetched = _obj({"path": _STR, "size": _INT, "sha256": _STR}, ["path", "size", "sha256"])
    fetch_req = {
        "oneOf": [
            _obj(
                {"type": {"const": "uri"}, "value": {"type": "string", "format": "uri"}},
                ["type", "value"],
            ),
            _obj(
                {"type": {"const": "peers"}, "peers": {"type": "array", "items": _STR}}, ["type"]
            ),
            _obj({"type": {"const": "slice"}, "dataset": _STR}, ["type", "dataset"]),
            _obj(
                {"type": {"const": "scheduler"}, "peer": _STR, "dataset": _STR},
                ["type", "peer", "dataset"],
            ),
            _obj(
                {
                    "type": {"const": "huggingface"},
                    "repository": _STR,
                    "revision": {"type": ["string", "null"]},
                    "filenames": {"type": "array", "items": _STR, "minItems": 1},
                    "token": {"type": ["string", "null"]},
                },
                ["type", "repository", "filenames"],
            ),
        ]
    }
    peers_ref = _obj(
        {
            "type": {"const": "peers"},
            "peers": {"type": "array", "items": _STR, "minItems": 1},
            "strategy": _obj({"type": {"enum": ["All", "One", "Random"]}}, ["type"]),
            "resource": {"type": "null"},
        },
        ["type", "peers"],
    )
    progress = {
        "oneOf": [
            _obj({"status": _obj({"batch_size": _INT}, ["batch_size"])}, ["status"]),
            _obj(
                {
                    "metrics": _obj(
                        {
                            "round": _INT,
                            "metrics": {
                                "type": "object",
                                "additionalProperties": {"type": "number"},
                            },
                        },
                        ["round", "metrics"],
                    )
                },
                ["metrics"],
            ),
            {"type": "string", "enum": ["update", "update-received", "updated"]},
        ]
    }
    reply = _obj(
        {
            "type": {"enum": ["Ok", "Continue", "ScheduleUpdate", "Done", "Error"]},
            "counter": _INT,
        },
        ["type"],
    )
    received = _obj(
        {"path": _STR, "size": _INT, "from_peer": _STR, "sha256": _STR, "blake3": _STR},
        ["path", "size", "from_peer", "sha256", "blake3"],
    )

    def body(schema: dict[str, Any]) -> dict[str, Any]:
        return {"required": True, "content": {"application/json": {"schema": schema}}}

    return {
        "openapi": "3.1.0",
        "info": {"title": "hypha-sm job bridge", "version": "1"},
        "paths": {
            "/openapi.json": {"get": {"responses": {"200": _json({"type": "object"})}}},
            "/resources/fetch": {
                "post": {
                    "summary": "Fetch artifacts into artifacts/ (blocking)",
                    "requestBody": body(fetch_req),
                    "responses": {
                        "200": _json({"type": "array", "items": fetched}),
                        **_errors(400, 403, 404, 413, 500, 501, 502),
                    },
                }
            },
            "/resources/send": {
                "post": {
                    "summary": "Send a work-dir file to peers; replies when the transfer ended",
                    "requestBody": body(
                        {
                            "oneOf": [
                                _obj(
                                    {
                                        "path": _STR,
                                        "peers": {"type": "array", "items": _STR, "minItems": 1},
                                        "purpose": _STR,
                                    },
                                    ["path", "peers"],
                                ),
                                _obj({"resource": peers_ref, "path": _STR}, ["resource", "path"]),
                            ]
                        }
                    ),
                    "responses": {
                        "200": _json(
                            _obj(
                                {
                                    "path": _STR,
                                    "results": {
                                        "type": "object",
                                        "additionalProperties": _STR,
                                    },
                                },
                                ["path", "results"],
                            )
                        ),
                        **_errors(400, 404, 413, 500, 501, 502),
                    },
                }
            },
            "/resources/receive": {
                "post": {
                    "summary": "Stream files peers push (server-sent events)",
                    "requestBody": {
                        "required": False,
                        "content": {"application/json": {"schema": _obj({"path": _STR})}},
                    },
                    "responses": {
                        "200": {
                            "description": "one `data:` event per received file; "
                            "`: keepalive` comments; `event: error` on failure",
                            "content": {"text/event-stream": {"schema": received}},
                        },
                        **_errors(400, 413, 500, 501, 502),
                    },
                }
            },
            "/status/send": {
                "post": {
                    "summary": "Forward training progress to the scheduler (blocking)",
                    "requestBody": body(progress),
                    "responses": {"200": _json(reply), **_errors(400, 413, 500, 501, 502)},
                }
            },
        },
        "components": {
            "schemas": {"Error": _obj({"code": _STR, "detail": _STR}, ["code", "detail"])}
        },
    }
