"""The job bridge on a real Unix socket (specs/bridge.md): routes, SSE, hostile requests."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import stat
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from hypha_sm.roles.worker.bridge import BridgeLimits, JobBridge, ReceivedFile
from hypha_sm.sdk.bridge_client import BridgeClient, BridgeClientError
from hypha_sm.wire.messages import (
    BatchStatus,
    Progress,
    ProgressReply,
    RoundMetrics,
    UpdateReceived,
    UpdateStarted,
)

PEER_A = "12D3KooWAbcdefghijkmnopqrstuvwxyz1"
PEER_B = "12D3KooWBbcdefghijkmnopqrstuvwxyz2"


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short directory for the socket (AF_UNIX paths are limited to ~107 bytes)."""
    with tempfile.TemporaryDirectory(prefix="hb-") as d:
        yield Path(d)


@asynccontextmanager
async def running(bridge: JobBridge) -> AsyncIterator[httpx.AsyncClient]:
    """Serve ``bridge`` in a nursery and yield an httpx client on its socket."""
    async with trio.open_nursery() as nursery:
        await nursery.start(bridge.serve)
        transport = httpx.AsyncHTTPTransport(uds=str(bridge.socket_path))
        async with httpx.AsyncClient(
            transport=transport, base_url="http://hypha", timeout=10
        ) as client:
            yield client
        nursery.cancel_scope.cancel()


def make_bridge(tmp_path: Path, sock_dir: Path, **kw: Any) -> JobBridge:
    """A bridge on ``tmp_path/work`` with a recording progress sender."""
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    seen: list[Progress] = []

    async def send_progress(progress: Progress) -> ProgressReply:
        seen.append(progress)
        if isinstance(progress.progress, UpdateReceived):
            return ProgressReply(reply="done")
        if isinstance(progress.progress, UpdateStarted):
            return ProgressReply(reply="schedule_update", counter=3)
        return ProgressReply(reply="continue")

    kw.setdefault("send_progress", send_progress)
    bridge = JobBridge(work_dir=work, socket_path=sock_dir / "bridge.sock", job_id="job-1", **kw)
    bridge.seen = seen  # type: ignore[attr-defined]
    return bridge


async def assert_alive(client: httpx.AsyncClient) -> None:
    """A good request still gets a good answer."""
    reply = await client.post("/status/send", json={"status": {"batch_size": 1}})
    assert reply.status_code == 200
    assert reply.json() == {"type": "Continue"}


async def test_socket_mode_and_cleanup(tmp_path: Path, sock_dir: Path) -> None:
    """The socket is created mode 0600 and removed when the bridge is cancelled."""
    bridge = make_bridge(tmp_path, sock_dir)
    async with running(bridge) as client:
        mode = os.stat(bridge.socket_path).st_mode
        assert stat.S_ISSOCK(mode)
        assert stat.S_IMODE(mode) == 0o600
        await assert_alive(client)
    assert not bridge.socket_path.exists()


async def test_a_connection_idle_longer_than_hypercorns_default_is_still_served(
    tmp_path: Path, sock_dir: Path
) -> None:
    """An executor that calls again after 6 s (loading a model, a long step) reuses its
    connection; with hypercorn's 5 s default the server had closed it, and a request sent as
    it closed failed with "Server disconnected without sending a response" (a devnet job died
    of it)."""
    bridge = make_bridge(tmp_path, sock_dir)
    request = (
        b"POST /status/send HTTP/1.1\r\nhost: hypha\r\ncontent-type: application/json\r\n"
        b"content-length: 31\r\n\r\n" + b'{"status": {"batch_size": 1}}  '
    )
    async with running(bridge):
        sock = await trio.open_unix_socket(str(bridge.socket_path))
        async with sock:
            for idle in (6.0, 0.0):
                await sock.send_all(request)
                answer = b""
                while b'"Continue"' not in answer:
                    more = await sock.receive_some(4096)
                    assert more, "the bridge closed the connection"
                    answer += more
                assert answer.startswith(b"HTTP/1.1 200")
                await trio.sleep(idle)


async def test_status_replies_in_original_shape(tmp_path: Path, sock_dir: Path) -> None:
    """Each progress form is converted, forwarded, and the reply comes back as {"type": ...}."""
    bridge = make_bridge(tmp_path, sock_dir)
    async with running(bridge) as client:
        r1 = await client.post("/status/send", json={"status": {"batch_size": 32, "x": 1}})
        r2 = await client.post(
            "/status/send", json={"metrics": {"round": 1, "metrics": {"loss": 2.5, "n": 3}}}
        )
        r3 = await client.post("/status/send", json="update")
        r4 = await client.post("/status/send", json="update-received")
    assert [r.json() for r in (r1, r2, r3, r4)] == [
        {"type": "Continue"},
        {"type": "Continue"},
        {"type": "ScheduleUpdate", "counter": 3},
        {"type": "Done"},
    ]
    seen: list[Progress] = bridge.seen  # type: ignore[attr-defined]
    assert [p.progress for p in seen] == [
        BatchStatus(batch_size=32),
        RoundMetrics(round=1, metrics={"loss": 2.5, "n": 3.0}),
        UpdateStarted(),
        UpdateReceived(),
    ]
    assert all(p.job_id == "job-1" for p in seen)
    assert bridge.requests[("status", 200)] == 4


async def test_status_failures(tmp_path: Path, sock_dir: Path) -> None:
    """A failing progress sender gives 502 JSON; no sender gives 501; the bridge keeps serving."""

    async def broken(progress: Progress) -> ProgressReply:
        raise ConnectionError("scheduler unreachable")

    bridge = make_bridge(tmp_path, sock_dir, send_progress=broken)
    async with running(bridge) as client:
        reply = await client.post("/status/send", json="update")
        assert reply.status_code == 502
        assert reply.json()["code"] == "upstream_error"
        assert "scheduler unreachable" in reply.json()["detail"]
    bridge = make_bridge(tmp_path, sock_dir, send_progress=None)
    async with running(bridge) as client:
        reply = await client.post("/status/send", json="update")
        assert reply.status_code == 501
        assert reply.json()["code"] == "not_implemented"


async def test_fetch_file_uri(tmp_path: Path, sock_dir: Path) -> None:
    """A file:// fetch copies into artifacts/ with size and sha256; outside the roots is 403."""
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(300_000)
    (src / "model.bin").write_bytes(data)
    bridge = make_bridge(tmp_path, sock_dir, file_roots=[src])
    async with running(bridge) as client:
        reply = await client.post(
            "/resources/fetch", json={"type": "uri", "value": (src / "model.bin").as_uri()}
        )
        assert reply.status_code == 200, reply.text
        assert reply.json() == [
            {
                "path": "artifacts/model.bin",
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        ]
        out = bridge.work_dir / "artifacts" / "model.bin"
        assert out.read_bytes() == data
        assert stat.S_IMODE(out.stat().st_mode) == 0o600
        reply = await client.post(
            "/resources/fetch", json={"type": "uri", "value": "file:///etc/passwd"}
        )
        assert reply.status_code == 403
        assert reply.json()["code"] == "forbidden_path"
        reply = await client.post("/resources/fetch", json={"type": "slice", "dataset": "d"})
        assert reply.status_code == 501
        assert reply.json()["code"] == "not_implemented"
        reply = await client.post("/resources/fetch", json={"type": "peers", "peers": [PEER_A]})
        assert reply.status_code == 501


async def test_fetch_http_uri(tmp_path: Path, sock_dir: Path) -> None:
    """An http:// fetch downloads from a local server; a 404 upstream and the size cap give 502."""
    data = os.urandom(200_000)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/files/weights.bin":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        bridge = make_bridge(tmp_path, sock_dir, limits=BridgeLimits(max_fetch_bytes=250_000))
        async with running(bridge) as client:
            reply = await client.post(
                "/resources/fetch", json={"type": "uri", "value": f"{base}/files/weights.bin"}
            )
            assert reply.status_code == 200, reply.text
            assert reply.json() == [
                {
                    "path": "artifacts/weights.bin",
                    "size": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(),
                }
            ]
            assert (bridge.work_dir / "artifacts" / "weights.bin").read_bytes() == data
            reply = await client.post(
                "/resources/fetch", json={"type": "uri", "value": f"{base}/nope"}
            )
            assert reply.status_code == 502
            assert reply.json()["code"] == "fetch_failed"
        small = make_bridge(tmp_path, sock_dir, limits=BridgeLimits(max_fetch_bytes=1000))
        async with running(small) as client:
            reply = await client.post(
                "/resources/fetch", json={"type": "uri", "value": f"{base}/files/weights.bin"}
            )
            assert reply.status_code == 502
            assert reply.json()["code"] == "fetch_too_large"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [("All", [PEER_A, PEER_B]), ("One", [PEER_A]), (None, [PEER_A, PEER_B])],
)
async def test_send_takes_the_originals_body_and_strategies(
    tmp_path: Path, sock_dir: Path, strategy: str | None, expected: list[str]
) -> None:
    """``{"resource": {"type": "peers", "peers", "strategy"}, "path"}``: All sends to every
    peer, One to the first (Random to any one: below); no strategy means All."""
    seen: list[list[str]] = []

    async def send(
        path: Path, peers: Sequence[str], purpose: str, *, name: str
    ) -> Mapping[str, str]:
        seen.append(list(peers))
        return dict.fromkeys(peers, "delivered")

    bridge = make_bridge(tmp_path, sock_dir, send=send)
    (bridge.work_dir / "1_local_gradients.pt").write_bytes(b"g")
    resource: dict[str, object] = {"type": "peers", "peers": [PEER_A, PEER_B], "resource": None}
    if strategy is not None:
        resource["strategy"] = {"type": strategy}
    async with running(bridge) as client:
        reply = await client.post(
            "/resources/send", json={"resource": resource, "path": "1_local_gradients.pt"}
        )
        assert reply.status_code == 200, reply.text
        random_pick = await client.post(
            "/resources/send",
            json={
                "resource": {**resource, "strategy": {"type": "Random"}},
                "path": "1_local_gradients.pt",
            },
        )
        bad = await client.post(
            "/resources/send",
            json={"resource": {**resource, "strategy": {"type": "Most"}}, "path": "x"},
        )
    assert seen[0] == expected
    assert random_pick.status_code == 200
    assert len(seen[1]) == 1
    assert seen[1][0] in (PEER_A, PEER_B)
    assert (bad.status_code, bad.json()["code"]) == (400, "invalid_request")


async def test_a_send_no_peer_received_is_a_502_naming_each_outcome(
    tmp_path: Path, sock_dir: Path
) -> None:
    """B8: the original answered 200 before copying; an executor then waited for an update
    that never came. Here a send that reached nobody fails."""

    async def send(
        path: Path, peers: Sequence[str], purpose: str, *, name: str
    ) -> Mapping[str, str]:
        return {PEER_A: "unreachable: connection refused", PEER_B: "refused: not receiving"}

    bridge = make_bridge(tmp_path, sock_dir, send=send)
    (bridge.work_dir / "g.pt").write_bytes(b"g")
    async with running(bridge) as client:
        reply = await client.post(
            "/resources/send", json={"path": "g.pt", "peers": [PEER_A, PEER_B]}
        )
    assert reply.status_code == 502
    body = reply.json()
    assert body["code"] == "not_delivered"
    assert "unreachable: connection refused" in body["detail"]
    assert "refused: not receiving" in body["detail"]


async def test_send_waits_and_reports(tmp_path: Path, sock_dir: Path) -> None:
    """Send replies only after the injected sender finished; its failure is a 502."""
    calls: list[tuple[Path, Sequence[str], str]] = []
    finished = trio.Event()

    async def send(
        path: Path, peers: Sequence[str], purpose: str, *, name: str
    ) -> Mapping[str, str]:
        calls.append((path, peers, purpose))
        assert await trio.Path(path).read_bytes() == b"x" * 10  # the file it checked
        assert name == "update.bin"
        await trio.sleep(0.2)
        if purpose == "fail":
            raise OSError("peer refused the transfer")
        finished.set()
        return dict.fromkeys(peers, "delivered")

    bridge = make_bridge(tmp_path, sock_dir, send=send)
    (bridge.work_dir / "update.bin").write_bytes(b"x" * 10)
    async with running(bridge) as client:
        reply = await client.post(
            "/resources/send",
            json={"path": "update.bin", "peers": [PEER_A, PEER_B], "purpose": "grad"},
        )
        assert finished.is_set()
        assert reply.status_code == 200
        assert reply.json() == {
            "path": "update.bin",
            "results": {PEER_A: "delivered", PEER_B: "delivered"},
        }
        assert str(calls[0][0]).startswith("/proc/self/fd/")
        reply = await client.post(
            "/resources/send", json={"path": "update.bin", "peers": [PEER_A], "purpose": "fail"}
        )
        assert reply.status_code == 502
        assert "peer refused" in reply.json()["detail"]
        reply = await client.post("/resources/send", json={"path": "missing", "peers": [PEER_A]})
        assert reply.status_code == 404
        assert reply.json()["code"] == "not_found"
        await assert_alive(client)


async def test_receive_streams_events_and_keepalive(tmp_path: Path, sock_dir: Path) -> None:
    """Receive streams one SSE event per injected file, with a keep-alive comment between."""

    async def receive(directory: Path, peers: frozenset[str]) -> AsyncIterator[ReceivedFile]:
        for i, peer in enumerate((PEER_A, PEER_B)):
            f = directory / peer
            f.write_bytes(b"u" * (i + 1))
            yield ReceivedFile(path=f, size=i + 1, from_peer=peer, sha256=f"h{i}")
            await trio.sleep(0.25)  # longer than the keep-alive interval

    bridge = make_bridge(tmp_path, sock_dir, receive=receive, limits=BridgeLimits(keepalive=0.1))
    async with (
        running(bridge) as client,
        client.stream("POST", "/resources/receive", json={"path": "inbox"}) as reply,
    ):
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        text = "".join([chunk async for chunk in reply.aiter_text()])
    events = [
        json.loads(line.removeprefix("data: "))
        for line in text.splitlines()
        if line.startswith("data: ")
    ]
    assert events == [
        {"path": f"inbox/{PEER_A}", "size": 1, "from_peer": PEER_A, "sha256": "h0", "blake3": ""},
        {"path": f"inbox/{PEER_B}", "size": 2, "from_peer": PEER_B, "sha256": "h1", "blake3": ""},
    ]
    assert ": keepalive\n\n" in text
    assert (bridge.work_dir / "inbox" / PEER_B).read_bytes() == b"uu"


async def test_sync_client_in_thread(tmp_path: Path, sock_dir: Path) -> None:
    """The executor's sync client: fetch, status, send, receive and errors, from a thread."""
    src = tmp_path / "work" / "seed.txt"
    src.parent.mkdir()
    src.write_text("hello")

    async def send(
        path: Path, peers: Sequence[str], purpose: str, *, name: str
    ) -> Mapping[str, str]:
        return dict.fromkeys(peers, "delivered")

    async def receive(directory: Path, peers: frozenset[str]) -> AsyncIterator[ReceivedFile]:
        yield ReceivedFile(path=directory / PEER_A, size=5, from_peer=PEER_A, sha256="h")

    bridge = make_bridge(tmp_path, sock_dir, send=send, receive=receive)

    def executor() -> dict[str, Any]:
        with BridgeClient(bridge.socket_path) as c:
            out: dict[str, Any] = {
                "fetch": c.fetch_uri(src.as_uri()),
                "status": c.status("update"),
                "send": c.send("seed.txt", [PEER_A]),
                "receive": list(c.receive()),
                "paths": sorted(c.openapi()["paths"]),
            }
            try:
                c.send("/etc/passwd", [PEER_A])
            except BridgeClientError as exc:
                out["error"] = (exc.status, exc.code)
            return out

    async with running(bridge):
        out = await trio.to_thread.run_sync(executor)
    assert out["fetch"] == [
        {"path": "artifacts/seed.txt", "size": 5, "sha256": hashlib.sha256(b"hello").hexdigest()}
    ]
    assert out["status"] == {"type": "ScheduleUpdate", "counter": 3}
    assert out["send"] == {"path": "seed.txt", "results": {PEER_A: "delivered"}}
    assert out["receive"] == [
        {"path": f"incoming/{PEER_A}", "size": 5, "from_peer": PEER_A, "sha256": "h", "blake3": ""}
    ]
    assert "/resources/receive" in out["paths"]
    assert out["error"] == (400, "invalid_path")


async def test_openapi_lists_every_route(tmp_path: Path, sock_dir: Path) -> None:
    """/openapi.json lists every route with request bodies and response shapes."""
    bridge = make_bridge(tmp_path, sock_dir)
    async with running(bridge) as client:
        doc = (await client.get("/openapi.json")).json()
    assert set(doc["paths"]) == {
        "/openapi.json",
        "/resources/fetch",
        "/resources/send",
        "/resources/receive",
        "/status/send",
    }
    for route in ("/resources/fetch", "/resources/send", "/resources/receive", "/status/send"):
        op = doc["paths"][route]["post"]
        assert "requestBody" in op
        assert "200" in op["responses"]
        assert "400" in op["responses"]


async def test_hostile_requests(tmp_path: Path, sock_dir: Path) -> None:
    """Absolute, '..', escaping symlinks, huge bodies, bad JSON and shapes get 4xx JSON."""

    async def send(
        path: Path, peers: Sequence[str], purpose: str, *, name: str
    ) -> Mapping[str, str]:
        raise AssertionError("must not be called")

    bridge = make_bridge(tmp_path, sock_dir, send=send)
    work = bridge.work_dir
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    (work / "link").symlink_to(outside)
    (work / "dirlink").symlink_to(tmp_path)
    (work / "artifacts").symlink_to(tmp_path)  # a planted artifacts/ pointing outside
    (work / "seed").write_text("x")
    huge = b'{"path": "' + b"a" * (5 * 1024 * 1024) + b'"}'

    def chunked() -> Iterator[bytes]:
        for _ in range(80):
            yield b"a" * 65536

    cases: list[tuple[str, dict[str, Any], int, str]] = [
        (
            "/resources/send",
            {"json": {"path": "/etc/passwd", "peers": [PEER_A]}},
            400,
            "invalid_path",
        ),
        (
            "/resources/send",
            {"json": {"path": "../secret.txt", "peers": [PEER_A]}},
            400,
            "invalid_path",
        ),
        (
            "/resources/send",
            {"json": {"path": "a/../../x", "peers": [PEER_A]}},
            400,
            "invalid_path",
        ),
        ("/resources/send", {"json": {"path": "link", "peers": [PEER_A]}}, 400, "invalid_path"),
        (
            "/resources/send",
            {"json": {"path": "dirlink/secret.txt", "peers": [PEER_A]}},
            400,
            "invalid_path",
        ),
        ("/resources/send", {"json": {"path": "x", "peers": "nope"}}, 400, "invalid_request"),
        ("/resources/receive", {"json": {"path": "/tmp"}}, 400, "invalid_path"),
        ("/status/send", {"content": b"{not json"}, 400, "invalid_json"),
        ("/status/send", {"content": b"\xff\xfe"}, 400, "invalid_json"),
        ("/status/send", {"json": {"status": {"batch_size": -1}}}, 400, "invalid_request"),
        ("/status/send", {"json": {"bogus": 1}}, 400, "invalid_request"),
        ("/status/send", {"json": [1, 2]}, 400, "invalid_request"),
        (
            "/resources/fetch",
            {"json": {"type": "uri", "value": "ftp://x/y"}},
            400,
            "invalid_request",
        ),
        ("/resources/fetch", {"json": {"type": "huggingface"}}, 400, "invalid_request"),
        ("/resources/fetch", {"json": "uri"}, 400, "invalid_request"),
        (
            "/resources/fetch",
            {"json": {"type": "uri", "value": (work / "seed").as_uri()}},
            400,
            "invalid_path",
        ),
        ("/nowhere", {"json": {}}, 404, "not_found"),
    ]
    async with running(bridge) as client:
        for route, kwargs, status, code in cases:
            reply = await client.post(route, **kwargs)
            assert reply.status_code == status, (route, kwargs.get("json"), reply.text)
            assert reply.json()["code"] == code, (route, reply.json())
            assert isinstance(reply.json()["detail"], str)
            await assert_alive(client)
        # 5 MiB bodies, declared and chunked (cut off while reading), from a sync client: the
        # async client's request-body generator would be left unfinished by the early reply.
        transport = httpx.HTTPTransport(uds=str(bridge.socket_path))

        def post_big(route: str, content: bytes | Iterator[bytes]) -> httpx.Response:
            with httpx.Client(transport=transport, base_url="http://hypha", timeout=10) as c:
                return c.post(route, content=content)

        for route, content in (
            ("/resources/send", huge),
            ("/status/send", huge),
            ("/status/send", chunked()),
        ):
            reply = await trio.to_thread.run_sync(post_big, route, content)
            assert reply.status_code == 413, route
            assert reply.json()["code"] == "body_too_large"
            await assert_alive(client)
        get = await client.get("/status/send")
        assert get.status_code == 405
        assert get.json()["code"] == "method_not_allowed"
    assert bridge.requests[("send", 400)] == 6
    assert bridge.requests[("send", 413)] == 1
    assert bridge.requests[("status", 413)] == 2


async def test_receive_client_disconnect(tmp_path: Path, sock_dir: Path) -> None:
    """A client leaving an open event stream closes the node's iterator; serving goes on."""
    closed = trio.Event()

    async def receive(directory: Path, peers: frozenset[str]) -> AsyncIterator[ReceivedFile]:
        try:
            n = 0
            while True:
                n += 1
                yield ReceivedFile(path=directory / f"f{n}", size=n, from_peer=PEER_A, sha256="")
                await trio.sleep(0.05)
        finally:
            closed.set()

    bridge = make_bridge(tmp_path, sock_dir, receive=receive)
    async with running(bridge) as client:

        def first_event() -> dict[str, Any]:
            # The sync client: httpx's async line iterators warn when left unfinished.
            with BridgeClient(bridge.socket_path) as c:
                for event in c.receive():
                    return event
            raise AssertionError("stream ended")

        event = await trio.to_thread.run_sync(first_event)
        assert event["path"] == "incoming/f1"
        with trio.fail_after(5):
            await closed.wait()
        await assert_alive(client)


def test_paths_the_node_reports_must_lie_inside_the_work_dir(
    tmp_path: Path, sock_dir: Path
) -> None:
    """A node callable that names a file outside the work dir (a bug, or a job's planted link)
    is a 502, never a path the job is told about; inside paths come back relative."""
    from hypha_sm.roles.worker.bridge import BridgeError

    bridge = make_bridge(tmp_path, sock_dir)
    (bridge.work_dir / "artifacts").mkdir()
    (bridge.work_dir / "artifacts" / "ok.bin").write_bytes(b"x")
    (bridge.work_dir / "escape").symlink_to(tmp_path)
    assert bridge.relative(bridge.work_dir / "artifacts" / "ok.bin") == "artifacts/ok.bin"
    assert bridge.relative(Path("artifacts/ok.bin")) == "artifacts/ok.bin"
    for outside in (Path("/etc/passwd"), bridge.work_dir / "escape" / "secret"):
        with pytest.raises(BridgeError) as refused:
            bridge.relative(outside)
        assert (refused.value.status, refused.value.code) == (502, "upstream_error")


def test_dot_dot_is_refused_even_where_it_would_stay_inside(
    tmp_path: Path, sock_dir: Path
) -> None:
    """Like the original, any `..` component is refused on its own (400, says `..`), before
    the real-path check that catches escapes by links; `a/../b` never reaches the file system."""
    from hypha_sm.roles.worker.bridge import BridgeError

    bridge = make_bridge(tmp_path, sock_dir)
    (bridge.work_dir / "a").mkdir()
    (bridge.work_dir / "b").write_text("inside")
    with pytest.raises(BridgeError) as refused:
        bridge.resolve("a/../b")
    assert refused.value.status == 400
    assert "contains '..'" in refused.value.detail
    assert bridge.resolve("b") == (bridge.work_dir / "b").resolve()
