"""The bridge's ``huggingface`` fetch (the original executor's model download) against a local
loopback mirror serving a tiny model built in the test: never the real hub."""

from __future__ import annotations

import hashlib
import http.server
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from tests.test_shell_bridge import make_bridge, running

transformers = pytest.importorskip("transformers")
hub = pytest.importorskip("huggingface_hub")

COMMIT = "1" * 40


def _mirror(root: Path) -> http.server.ThreadingHTTPServer:
    """Serves ``root/<file>`` as ``/<owner>/<name>/resolve/<revision>/<file>``, as the hub does."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def _file(self) -> Path | None:
            parts = self.path.split("?")[0].strip("/").split("/")
            if len(parts) < 5 or parts[2] != "resolve" or parts[:2] != ["hypha-test", "tiny"]:
                return None
            path = root / "/".join(parts[4:])
            return path if path.is_file() else None

        def _headers(self, body: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
            self.send_header("X-Repo-Commit", COMMIT)
            self.end_headers()

        def do_HEAD(self) -> None:
            path = self._file()
            if path is None:
                self.send_response(404)
                self.end_headers()
                return
            self._headers(path.read_bytes())

        def do_GET(self) -> None:
            path = self._file()
            if path is None:
                self.send_response(404)
                self.end_headers()
                return
            body = path.read_bytes()
            self._headers(body)
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    return http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)


@pytest.fixture
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A tiny GPT-2 (config.json, model.safetensors, a file in a subdirectory) on a mirror;
    HF_ENDPOINT points at it and the hub cache is the test's own."""
    repo = tmp_path / "repo"
    config = transformers.GPT2Config(
        vocab_size=32, n_positions=8, n_embd=8, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0
    )
    transformers.GPT2LMHeadModel(config).save_pretrained(repo)
    (repo / "extra").mkdir()
    (repo / "extra" / "notes.txt").write_text("a file in a subdirectory\n")
    server = _mirror(repo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setattr(hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    try:
        yield repo
    finally:
        server.shutdown()
        server.server_close()


def _original(filenames: list[str], **extra: object) -> dict[str, object]:
    return {
        "type": "huggingface",
        "repository": "hypha-test/tiny",
        "revision": None,
        "filenames": filenames,
        "token": None,
        **extra,
    }


async def test_the_originals_huggingface_reference_writes_each_file_into_artifacts(
    tmp_path: Path, mirror: Path
) -> None:
    """config.json, model.safetensors and extra/notes.txt land in artifacts/ (subdirectories
    kept) byte for byte, and transformers loads the model from there."""
    with tempfile.TemporaryDirectory(prefix="hb-") as sock_dir:
        bridge = make_bridge(tmp_path, Path(sock_dir))
        async with running(bridge) as client:
            names = ["config.json", "model.safetensors", "extra/notes.txt"]
            reply = await client.post("/resources/fetch", json=_original(names), timeout=60)
            assert reply.status_code == 200, reply.text
            listed = reply.json()
    assert [f["path"] for f in listed] == [f"artifacts/{n}" for n in names]
    for name, item in zip(names, listed, strict=True):
        data = (bridge.work_dir / item["path"]).read_bytes()
        assert data == (mirror / name).read_bytes()
        assert item["size"] == len(data)
        assert item["sha256"] == hashlib.sha256(data).hexdigest()
    model = await trio.to_thread.run_sync(
        lambda: transformers.AutoModelForCausalLM.from_pretrained(bridge.work_dir / "artifacts")
    )
    assert model.config.n_embd == 8


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (_original(["missing.bin"]), 502, "fetch_failed"),
        (_original(["../escape"]), 400, "invalid_path"),
        (_original(["/etc/passwd"]), 400, "invalid_path"),
        (_original([]), 400, "invalid_request"),
        (_original(["config.json"], repository=" "), 400, "invalid_request"),
        (_original(["config.json"], repository="a/b/c"), 400, "invalid_request"),
        (_original(["config.json"], token=7), 400, "invalid_request"),
    ],
)
async def test_a_bad_huggingface_fetch_is_refused_with_a_reason(
    tmp_path: Path, mirror: Path, body: dict[str, object], status: int, code: str
) -> None:
    with tempfile.TemporaryDirectory(prefix="hb-") as sock_dir:
        bridge = make_bridge(tmp_path, Path(sock_dir))
        async with running(bridge) as client:
            reply = await client.post("/resources/fetch", json=body, timeout=60)
    assert (reply.status_code, reply.json()["code"]) == (status, code), reply.text
    assert not list((bridge.work_dir).glob("artifacts/**/*.part"))


def test_the_mirror_is_what_the_hub_client_sees(mirror: Path) -> None:
    """The fixture's mirror answers huggingface_hub as the hub would (so the tests above test
    the bridge, not a broken server)."""
    import os

    path = hub.hf_hub_download(
        "hypha-test/tiny", "config.json", endpoint=os.environ["HF_ENDPOINT"]
    )
    assert Path(path).read_bytes() == (mirror / "config.json").read_bytes()
    with pytest.raises(hub.errors.EntryNotFoundError):
        hub.hf_hub_download("hypha-test/tiny", "nope.json", endpoint=os.environ["HF_ENDPOINT"])


async def test_a_file_larger_than_a_fetch_may_be_is_refused_before_it_is_downloaded(
    tmp_path: Path, mirror: Path
) -> None:
    """Found by review: the hub's cache is the node's disk, not the job's, so the size cap
    applied only to the copy into artifacts/ let a job fill the node's disk through the cache.
    The file's size is asked first; nothing of it reaches the cache."""
    from hypha_sm.roles.worker.bridge import BridgeLimits

    with tempfile.TemporaryDirectory(prefix="hb-") as sock_dir:
        bridge = make_bridge(tmp_path, Path(sock_dir), limits=BridgeLimits(max_fetch_bytes=1000))
        async with running(bridge) as client:
            reply = await client.post(
                "/resources/fetch", json=_original(["model.safetensors"]), timeout=60
            )
    assert reply.status_code == 502
    assert reply.json()["code"] == "fetch_too_large"
    cached = [p for p in (tmp_path / "hub-cache").rglob("*") if p.is_file()]
    assert not any(p.name == "model.safetensors" or p.stat().st_size > 1000 for p in cached)
