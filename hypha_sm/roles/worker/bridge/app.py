"""The job bridge: HTTP/1.1 on the job's Unix socket, for the executor (specs/bridge.md).

A starlette app served by hypercorn's trio worker. The executor asks the node to fetch
artifacts into its work dir, to send a file to peers, to stream the files peers send it, and
to forward training progress to the scheduler. Everything the node does on its behalf is an
injected async callable, so this module knows nothing about the network.

Control only crosses the socket (JSON); data stays in files in the work dir. Every path in
a request or reply is relative to the work dir; absolute paths, ``..`` and symlinks that
escape the work dir are refused with 400. Every error is JSON ``{"code", "detail"}``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import socket
import stat
import urllib.parse
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import httpx
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

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
from hypha_sm.roles.worker.bridge.openapi import openapi_schema
from hypha_sm.roles.worker.bridge.progress import parse_progress, reply_json
from hypha_sm.roles.worker.bridge.sse import EventStream
from hypha_sm.roles.worker.users import Credentials, give
from hypha_sm.wire.bounds import MAX_JSON_DEPTH, json_problem
from hypha_sm.wire.messages import (
    Progress,
    ProgressReply,
)

log = logging.getLogger("hypha_sm.roles.worker.bridge")

_CHUNK = 256 * 1024
#: A Hugging Face repository id (``name`` or ``owner/name``) and the most files one fetch takes.
_HF_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?")
MAX_HF_FILES = 64
#: Seconds a job's idle bridge connection stays open (hypercorn's default is 5).
KEEP_ALIVE = 24 * 3600.0
_BASE58 = set("123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz")


# -- the bridge ------------------------------------------------------------------------------


@dataclass
class JobBridge:
    """One job's bridge: its work dir, its socket, and what the node does for it."""

    work_dir: Path
    socket_path: Path
    job_id: str = ""
    send_progress: SendProgress | None = None
    send: SendFile | None = None
    receive: ReceiveFiles | None = None
    fetch_peers: FetchPeers | None = None
    fetch_slice: FetchSlice | None = None
    file_roots: Sequence[Path] | None = None  # where file:// fetches may read; default work dir
    limits: BridgeLimits = field(default_factory=BridgeLimits)
    http_transport: httpx.AsyncBaseTransport | None = None  # tests; default: a real one
    requests: Counter[tuple[str, int]] = field(default_factory=Counter)
    on_request: Callable[[str, int], None] | None = None  # (route, status) e.g. for telemetry
    #: The job's own user (its socket and the files the node places are given to it).
    owner: Credentials | None = None

    def __post_init__(self) -> None:
        self._root = Path(os.path.realpath(self.work_dir))
        roots = self.file_roots if self.file_roots is not None else [self.work_dir]
        self._file_roots = [Path(os.path.realpath(r)) for r in roots]
        self.app = self._build_app()

    # -- serving ------------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind the socket (mode 0600) and serve until cancelled; the socket file is removed.

        ``task_status.started`` is called once the socket listens.
        """
        path = str(self.socket_path)
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                raise FileExistsError(f"{path} exists and is not a socket")
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            # Nobody can connect before listen(), which hypercorn calls: no window at a wider mode.
            os.chmod(path, 0o600)
            if self.owner is not None:  # connecting needs write access: the job's user only
                os.chown(path, self.owner.uid, self.owner.gid)
        except BaseException:
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            raise
        ino = os.lstat(path).st_ino
        config = HypercornConfig()
        config.bind = [f"fd://{sock.detach()}"]
        config.accesslog = None
        server_log = logging.getLogger("hypha_sm.roles.worker.bridge.server")
        # Its "Running on ... (CTRL + C to quit)" line per job says nothing to an operator.
        server_log.setLevel(max(server_log.level, logging.WARNING))
        config.errorlog = server_log
        config.include_server_header = False
        config.graceful_timeout = 1.0
        # Hypercorn closes a connection idle for 5 s by default. An executor that calls again
        # just then (a fetch after loading a model, a status after a step) finds it closed
        # as its request goes out: "Server disconnected without sending a response", and a
        # client that does not retry (the original executor's) fails the job. The socket is
        # the job's own, so its connections stay open while the job runs.
        config.keep_alive_timeout = KEEP_ALIVE
        try:
            app: Any = self.app  # hypercorn's ASGI types are narrower than starlette's
            await hypercorn_serve(app, config, task_status=task_status)
        finally:
            with contextlib.suppress(FileNotFoundError):
                if os.lstat(path).st_ino == ino:
                    os.unlink(path)

    # -- app ----------------------------------------------------------------------------------

    def _build_app(self) -> Starlette:
        routes = [
            Route("/openapi.json", self._counted("openapi", self._openapi), methods=["GET"]),
            Route("/resources/fetch", self._counted("fetch", self._fetch), methods=["POST"]),
            Route("/resources/send", self._counted("send", self._send), methods=["POST"]),
            Route("/resources/receive", self._counted("receive", self._receive), methods=["POST"]),
            Route("/status/send", self._counted("status", self._status), methods=["POST"]),
        ]

        async def http_error(request: Request, exc: Exception) -> Response:
            status = exc.status_code if isinstance(exc, HTTPException) else 500
            code = {404: "not_found", 405: "method_not_allowed"}.get(status, "http_error")
            self._count("other", status)
            return error_response(status, code, f"{request.method} {request.url.path}")

        return Starlette(routes=routes, exception_handlers={404: http_error, 405: http_error})

    def _counted(
        self, name: str, handler: Callable[[Request], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                response = await handler(request)
            except BridgeError as exc:
                response = error_response(exc.status, exc.code, exc.detail)
            except Exception as exc:
                log.exception("bridge %s failed", name)
                response = error_response(500, "internal_error", f"{type(exc).__name__}: {exc}")
            self._count(name, response.status_code)
            return response

        return endpoint

    def _count(self, route: str, status: int) -> None:
        self.requests[(route, status)] += 1
        if self.on_request is not None:
            self.on_request(route, status)

    async def _read_json(self, request: Request, *, allow_empty: bool = False) -> object:
        limit = self.limits.max_body
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                too_big = int(declared) > limit
            except ValueError:
                raise BridgeError(400, "invalid_request", "bad content-length") from None
            if too_big:
                raise BridgeError(413, "body_too_large", f"body exceeds {limit} bytes")
        body = bytearray()
        async with contextlib.aclosing(request.stream()) as chunks:
            async for chunk in chunks:
                body += chunk
                if len(body) > limit:
                    raise BridgeError(413, "body_too_large", f"body exceeds {limit} bytes")
        if allow_empty and not body.strip():
            return {}
        if json_problem(body) is not None:
            raise BridgeError(400, "invalid_json", f"nested deeper than {MAX_JSON_DEPTH} levels")
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise BridgeError(400, "invalid_json", str(exc)[:200]) from None

    # -- paths --------------------------------------------------------------------------------

    def resolve(self, raw: object, what: str = "path") -> Path:
        """A request path as a real path inside the work dir, or 400."""
        if not isinstance(raw, str) or not raw or "\x00" in raw:
            raise BridgeError(400, "invalid_path", f"{what} must be a non-empty relative path")
        rel = PurePosixPath(raw)
        if rel.is_absolute():
            raise BridgeError(400, "invalid_path", f"{what} is absolute: {raw!r}")
        if ".." in rel.parts:
            raise BridgeError(400, "invalid_path", f"{what} contains '..': {raw!r}")
        return self._inside(self._root / rel, what, raw)

    def _inside(self, full: Path, what: str, raw: str) -> Path:
        real = Path(os.path.realpath(full))
        if not real.is_relative_to(self._root):
            raise BridgeError(400, "invalid_path", f"{what} escapes the work dir: {raw!r}")
        return real

    def relative(self, path: Path) -> str:
        """A path the node reports, relative to the work dir."""
        if not path.is_absolute():
            return path.as_posix()
        real = Path(os.path.realpath(path))
        if not real.is_relative_to(self._root):
            raise BridgeError(
                502, "upstream_error", "the node reported a path outside the work dir"
            )
        return real.relative_to(self._root).as_posix()

    def _artifacts_dir(self) -> Path:
        target = self._root / "artifacts"
        target.mkdir(mode=0o700, exist_ok=True)
        give(target, self._root)
        return self._inside(target, "artifacts", "artifacts")

    # -- routes -------------------------------------------------------------------------------

    async def _openapi(self, request: Request) -> Response:
        return JSONResponse(openapi_schema())

    async def _fetch(self, request: Request) -> Response:
        body = await self._read_json(request)
        if not isinstance(body, dict) or not isinstance(body.get("type"), str):
            raise BridgeError(400, "invalid_request", 'fetch needs an object with a "type"')
        kind = body["type"]
        if kind == "uri":
            value = body.get("value")
            if not isinstance(value, str):
                raise BridgeError(400, "invalid_request", 'uri fetch needs a string "value"')
            fetched = [await self._fetch_uri(value)]
        elif kind == "huggingface":
            fetched = await self._fetch_huggingface(body)
        elif kind == "peers":
            if self.fetch_peers is None:
                raise BridgeError(501, "not_implemented", "fetching from peers is not available")
            fetched = list(await self._call(self.fetch_peers(body, self._artifacts_dir())))
        elif kind in ("slice", "scheduler"):
            # {"type":"scheduler","peer":S,"dataset":D} is the original's form; "slice" asks
            # the job's own scheduler.
            dataset = body.get("dataset")
            peer = body.get("peer") if kind == "scheduler" else None
            if not isinstance(dataset, str) or not dataset:
                raise BridgeError(400, "invalid_request", 'slice fetch needs a "dataset"')
            if kind == "scheduler" and (not isinstance(peer, str) or not peer):
                raise BridgeError(400, "invalid_request", 'scheduler fetch needs a "peer"')
            prefetch = body.get("prefetch")
            if prefetch is not None and (type(prefetch) is not int or not 0 <= prefetch <= 16):
                raise BridgeError(400, "invalid_request", '"prefetch" must be an integer 0..16')
            if self.fetch_slice is None:
                raise BridgeError(501, "not_implemented", "fetching data slices is not available")
            fetch = self.fetch_slice(dataset, self._artifacts_dir(), peer, prefetch)
            fetched = list(await self._call(fetch))
        else:
            raise BridgeError(400, "invalid_request", f"unsupported fetch type {kind!r}")
        return JSONResponse(
            [{"path": self.relative(f.path), "size": f.size, "sha256": f.sha256} for f in fetched]
        )

    async def _fetch_huggingface(self, body: Mapping[str, Any]) -> list[FetchedFile]:
        """The original's ``huggingface`` reference: each file into ``artifacts/<filename>``.

        Through ``huggingface_hub`` and its cache, so ``HF_ENDPOINT`` (a mirror),
        ``HF_HUB_OFFLINE`` and ``HF_HOME`` apply as they do to any Hugging Face tool.
        """
        repository, revision, token = (
            body.get("repository"),
            body.get("revision"),
            body.get("token"),
        )
        filenames = body.get("filenames")
        if not isinstance(repository, str) or not _HF_REPO.fullmatch(repository):
            raise BridgeError(400, "invalid_request", 'huggingface fetch needs a "repository"')
        if revision is not None and (
            not isinstance(revision, str) or not 0 < len(revision) <= 200
        ):
            raise BridgeError(400, "invalid_request", '"revision" must be a string')
        if token is not None and not isinstance(token, str):
            raise BridgeError(400, "invalid_request", '"token" must be a string')
        if (
            not isinstance(filenames, list)
            or not 0 < len(filenames) <= MAX_HF_FILES
            or not all(isinstance(f, str) for f in filenames)
        ):
            raise BridgeError(400, "invalid_request", f'"filenames": 1..{MAX_HF_FILES} names')
        for name in filenames:
            if PurePosixPath(name).is_absolute():
                raise BridgeError(400, "invalid_path", f"filename is absolute: {name!r}")
        artifacts = self._artifacts_dir()
        targets = [self.resolve(f"artifacts/{name}", "filename") for name in filenames]
        try:
            from huggingface_hub import (
                constants as hf_constants,
            )
            from huggingface_hub import (
                get_hf_file_metadata,
                hf_hub_download,
                hf_hub_url,
            )
        except ImportError:
            raise BridgeError(501, "not_implemented", "huggingface_hub is not installed") from None
        fetched = []
        for name, dest in zip(filenames, targets, strict=True):

            def download(name: str = name) -> str:
                endpoint = os.environ.get("HF_ENDPOINT") or None
                if not hf_constants.HF_HUB_OFFLINE:
                    # The hub's cache is the node's disk, not the job's: a file larger than a
                    # fetch may be is refused before a byte of it is downloaded.
                    url = hf_hub_url(
                        repository, name, revision=revision or "main", endpoint=endpoint
                    )
                    size = get_hf_file_metadata(url, token=token, endpoint=endpoint).size
                    if size is not None and size > self.limits.max_fetch_bytes:
                        raise BridgeError(
                            502,
                            "fetch_too_large",
                            f"{repository}/{name} is {size} bytes, more than "
                            f"{self.limits.max_fetch_bytes}",
                        )
                return str(
                    hf_hub_download(
                        repository,
                        name,
                        revision=revision or "main",
                        token=token,
                        endpoint=endpoint,
                    )
                )

            try:
                cached = await trio.to_thread.run_sync(download)
            except BridgeError:
                raise
            except Exception as exc:  # the hub's errors, offline misses, network failures
                detail = f"{repository}@{revision or 'main'}/{name}: {type(exc).__name__}: {exc}"
                raise BridgeError(502, "fetch_failed", detail[:500]) from None
            for parent in reversed(dest.parents):
                if (
                    parent.is_relative_to(artifacts)
                    and parent != artifacts
                    and not parent.exists()
                ):
                    parent.mkdir(mode=0o700)
                    give(parent, self._root)
            fd = os.open(cached, os.O_RDONLY)
            try:
                size, digest = await self._write(dest, _read_chunks(fd))
            finally:
                os.close(fd)
            fetched.append(FetchedFile(path=dest, size=size, sha256=digest))
        return fetched

    @staticmethod
    async def _call(awaitable: Awaitable[Any]) -> Any:
        try:
            return await awaitable
        except BridgeError:
            raise
        except Exception as exc:
            log.warning("bridge: node callable failed: %r", exc)
            raise BridgeError(502, "upstream_error", f"{type(exc).__name__}: {exc}") from None

    async def _fetch_uri(self, uri: str) -> FetchedFile:
        parts = urllib.parse.urlsplit(uri)
        name = _safe_name(urllib.parse.unquote(parts.path.rsplit("/", 1)[-1]))
        if parts.scheme == "file":
            fd = self._file_source(uri, parts)
            try:
                dest = self._artifacts_dir() / name
                size, digest = await self._write(dest, _read_chunks(fd))
            finally:
                os.close(fd)
        elif parts.scheme in ("http", "https") and parts.netloc:
            dest = self._artifacts_dir() / name
            size, digest = await self._download(uri, dest)
        else:
            raise BridgeError(400, "invalid_request", "uri must be http://, https:// or file://")
        return FetchedFile(path=dest, size=size, sha256=digest)

    def _file_source(self, uri: str, parts: urllib.parse.SplitResult) -> int:
        """An open descriptor of the file, checked to be inside an allowed root."""
        if parts.netloc not in ("", "localhost"):
            raise BridgeError(400, "invalid_request", "file:// URIs must be local")
        source = Path(os.path.realpath(urllib.parse.unquote(parts.path)))
        if not any(source.is_relative_to(r) for r in self._file_roots):
            raise BridgeError(403, "forbidden_path", f"{uri!r} is outside the allowed roots")
        return open_inside(source, self._file_roots, uri)

    async def _download(self, uri: str, dest: Path) -> tuple[int, str]:
        cap = self.limits.max_fetch_bytes
        try:
            async with (
                httpx.AsyncClient(
                    transport=self.http_transport,
                    timeout=self.limits.fetch_timeout,
                    follow_redirects=True,
                    max_redirects=self.limits.max_redirects,
                ) as client,
                client.stream("GET", uri) as reply,
            ):
                if reply.status_code >= 400:
                    raise BridgeError(502, "fetch_failed", f"GET {uri}: HTTP {reply.status_code}")
                declared = reply.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > cap:
                    raise BridgeError(502, "fetch_too_large", f"{uri} exceeds {cap} bytes")
                return await self._write(dest, reply.aiter_bytes(_CHUNK))
        except httpx.HTTPError as exc:
            raise BridgeError(502, "fetch_failed", f"GET {uri}: {exc!r}") from None

    async def _write(self, dest: Path, chunks: AsyncIterator[bytes]) -> tuple[int, str]:
        """Stream into ``dest`` (via a fresh temp file, fsynced, mode 0600); size and SHA-256.

        The temp file has a random name and is created exclusively, without following links, so
        nothing the job planted in the directory is written through; a name the job occupies
        (say, a directory where the file should go) is a 409.
        """
        cap = self.limits.max_fetch_bytes
        tmp = dest.with_name(f".{dest.name}.{os.urandom(6).hex()}.part")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(tmp, flags, 0o600)
        except OSError as exc:
            await _close_chunks(chunks)
            raise BridgeError(
                409, "conflict", f"cannot write {dest.name!r}: {exc.strerror}"
            ) from None
        digest = hashlib.sha256()
        size = 0
        try:
            with os.fdopen(fd, "wb") as raw:
                out = trio.wrap_file(raw)
                async for chunk in chunks:
                    size += len(chunk)
                    if size > cap:
                        raise BridgeError(502, "fetch_too_large", f"artifact exceeds {cap} bytes")
                    digest.update(chunk)
                    await out.write(chunk)
                await out.flush()
                await trio.to_thread.run_sync(os.fsync, raw.fileno())
            give(tmp, dest.parent)
            try:
                os.replace(tmp, dest)
            except OSError as exc:
                raise BridgeError(
                    409, "conflict", f"cannot write {dest.name!r}: {exc.strerror}"
                ) from None
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        finally:
            await _close_chunks(chunks)
        return size, digest.hexdigest()

    async def _send(self, request: Request) -> Response:
        body = await self._read_json(request)
        if not isinstance(body, dict):
            raise BridgeError(400, "invalid_request", "send needs an object")
        path = self.resolve(body.get("path"))
        peers = _send_peers(body)
        purpose = body.get("purpose", "")
        if not isinstance(purpose, str):
            raise BridgeError(400, "invalid_request", '"purpose" must be a string')
        if self.send is None:
            raise BridgeError(501, "not_implemented", "sending to peers is not available")
        fd = open_inside(path, [self._root], str(body["path"]))
        try:
            # The node reads the file it checked, whatever the path points to by now.
            opened = Path(f"/proc/self/fd/{fd}")
            results = await self._call(self.send(opened, list(peers), purpose, name=path.name))
        finally:
            os.close(fd)
        if not any(outcome == "delivered" for outcome in results.values()):
            # An executor must fail here, not wait for an answer to a file nobody got (B8).
            shown = "; ".join(f"{p[:12]}: {o}" for p, o in sorted(results.items()))[:500]
            raise BridgeError(502, "not_delivered", f"no peer received the file ({shown})")
        return JSONResponse({"path": self.relative(path), "results": dict(results)})

    async def _receive(self, request: Request) -> Response:
        body = await self._read_json(request, allow_empty=True)
        if not isinstance(body, dict):
            raise BridgeError(400, "invalid_request", "receive needs an object")
        raw = body.get("path")
        raw = "incoming" if raw is None else raw
        target = self.resolve(raw)
        peers = _receive_peers(body)
        if self.receive is None:
            raise BridgeError(501, "not_implemented", "receiving from peers is not available")
        target.mkdir(mode=0o700, parents=True, exist_ok=True)
        target = self._inside(target, "path", str(raw))
        for made in [target, *target.parents]:
            if made == self._root or not made.is_relative_to(self._root):
                break
            give(made, self._root)
        if not target.is_dir():
            raise BridgeError(400, "invalid_path", f"not a directory: {raw!r}")
        try:
            events = self.receive(target, peers)
        except Exception as exc:
            raise BridgeError(502, "upstream_error", f"{type(exc).__name__}: {exc}") from None

        def describe(item: ReceivedFile) -> dict[str, Any]:
            return {
                "path": self.relative(item.path),
                "size": item.size,
                "from_peer": item.from_peer,
                "sha256": item.sha256,
                "blake3": item.blake3,
            }

        return EventStream(events, describe, self.limits.keepalive)

    async def _status(self, request: Request) -> Response:
        kind = parse_progress(await self._read_json(request))
        if self.send_progress is None:
            raise BridgeError(501, "not_implemented", "progress forwarding is not available")
        reply = await self._call(self.send_progress(Progress(job_id=self.job_id, progress=kind)))
        if not isinstance(reply, ProgressReply):
            raise BridgeError(
                502, "upstream_error", "the scheduler's reply is not a ProgressReply"
            )
        return JSONResponse(reply_json(reply))


async def _close_chunks(chunks: AsyncIterator[bytes]) -> None:
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        with trio.CancelScope(shield=True):
            await aclose()


def _peer_list(value: object, what: str) -> list[str]:
    if not isinstance(value, list) or not all(
        isinstance(p, str) and p and set(p) <= _BASE58 for p in value
    ):
        raise BridgeError(400, "invalid_request", f"{what} must be a list of peer ids")
    return value


def _send_peers(body: Mapping[str, Any]) -> list[str]:
    """To whom: ``peers`` (ours), or the original's ``resource`` (peers with a strategy).

    The original's strategies: ``All`` every peer, ``One`` the first, ``Random`` any one.
    """
    resource = body.get("resource")
    if "peers" not in body and isinstance(resource, dict):
        if resource.get("type") != "peers":
            raise BridgeError(400, "invalid_request", 'send needs a "peers" resource')
        peers = _peer_list(resource.get("peers"), '"resource.peers"')
        strategy = resource.get("strategy") or {"type": "All"}
        kind = strategy.get("type") if isinstance(strategy, dict) else strategy
        if not peers:
            raise BridgeError(400, "invalid_request", '"resource.peers" is empty')
        if kind == "All":
            return peers
        if kind == "One":
            return peers[:1]
        if kind == "Random":
            return [secrets.choice(peers)]
        raise BridgeError(400, "invalid_request", f"unsupported strategy {kind!r}")
    listed = body.get("peers")
    if not isinstance(listed, list) or not listed:
        raise BridgeError(400, "invalid_request", '"peers" must be a non-empty list of peer ids')
    return _peer_list(listed, '"peers"')


def _receive_peers(body: Mapping[str, Any]) -> frozenset[str]:
    """Whose files to take: ``peers`` (or the original's ``resource.peers``); empty = anyone."""
    if "peers" in body:
        return frozenset(_peer_list(body["peers"], '"peers"'))
    resource = body.get("resource")
    if isinstance(resource, dict) and "peers" in resource:
        return frozenset(_peer_list(resource["peers"], '"resource.peers"'))
    return frozenset()


def _safe_name(name: str) -> str:
    if name in ("", ".", "..") or "/" in name or "\\" in name or "\x00" in name:
        return "part-0.bin"
    return name


async def _read_chunks(fd: int) -> AsyncIterator[bytes]:
    """The file's bytes; the caller owns (and closes) ``fd``."""
    while chunk := await trio.to_thread.run_sync(os.read, fd, _CHUNK):
        yield chunk


def open_inside(path: Path, roots: Sequence[Path], what: str) -> int:
    """Open a regular file for reading and prove it lies inside one of ``roots``; its fd.

    The check is made on the file actually opened (its ``/proc/self/fd`` link), not on the
    path: a job that swaps a path component for a symlink between a check and the open (to
    make the node, maybe as root, read its key) gets a 403. ``O_NONBLOCK``: a FIFO planted in
    place of the file cannot hang the node; it is refused as not a file.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError:
        raise BridgeError(404, "not_found", f"no such file: {what!r}") from None
    except OSError as exc:
        raise BridgeError(409, "unreadable", f"{what!r}: {exc.strerror}") from None
    try:
        real = Path(os.readlink(f"/proc/self/fd/{fd}"))
        if not any(real.is_relative_to(r) for r in roots):
            raise BridgeError(403, "forbidden_path", f"{what!r} is outside the allowed roots")
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise BridgeError(404, "not_found", f"{what!r} is not a file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd
