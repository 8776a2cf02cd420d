"""Bulk transfer throughput and memory, against the network issue's targets.

Run from the repository root:

    python bench/bench_bulk.py            # 256 MiB, median of 3 (~1-2 min)
    python bench/bench_bulk.py --quick    # 32 MiB smoke run (~15 s)
    python bench/bench_bulk.py --survey   # raw transports: bare TCP, trio, NNG, TLS

Sender and receiver are separate processes (this file, re-run with ``--role``), so each one's
peak RSS growth is its own: the receiver resets its high-water mark (``/proc/self/clear_refs``)
once it is listening, and reports ``VmHWM`` minus the ``VmRSS`` of that moment; the sender does
the same before it starts. Time is taken by the sender, from connecting to the receiver's last
word (the verified-and-stored verdict for ``hypha_sm.net.bulk``, a one-byte ack for the bare
sockets). Variants are interleaved within each repetition, so drift on this shared 2-core box
hits all of them alike; every figure is the median of the repetitions, after one unrecorded
warm-up round.

This VM adds two kinds of noise that are not the code under test, and the bench works around
both for every file-touching variant alike: it reports freed pages to the hypervisor at once
(``/sys/module/page_reporting``), so writing into fresh pages can run at 0.4 GB/s; each trial
therefore deletes the previous output just before it starts, letting the kernel reuse those
pages. And DAMON pages out file pages idle for about a minute, so the source file is read into
the page cache before each trial.

Baselines, same run:

* ``bare TCP mem``: blocking ``sendall`` of a 1 MiB buffer / ``recv_into`` a 1 MiB buffer,
  memory to memory; the sockets alone (the reference's 2.5-4.7 GB/s).
* ``bare TCP file``: the same sockets copying the same file to a file (read, sendall,
  recv_into, write), no checks: the cheapest correct file copy over TCP.
* ``bare TCP mem + SHA-256``: the first, with the receiver hashing what it gets (inline): the
  cheapest transfer that checks a SHA-256 at all, without files.
* ``bare TLS mem``: blocking ``ssl`` sockets (TLS 1.3, mutual), memory to memory.

The implementation reads the source file and writes the destination file, checks size and
digest (hashing every byte on the receiver), and signs/verifies the envelopes. The sender is
given the BLAKE3 (``blake3=``), as a producer that wrote the file would have it (the parameter
server hashes its update while writing it); the ``SHA-256`` row offers the SHA-256 instead, as
a data node serving a manifest's slice does; the ``+hash`` row also hashes the source first.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import blake3
import trio

from hypha_sm.net import bulk
from hypha_sm.net.tls import TlsFiles
from hypha_sm.wire.identity import Identity

MiB = 1 << 20
CHUNK = MiB
SENDER = Identity.from_seed(b"s" * 32)
RECEIVER = Identity.from_seed(b"r" * 32)
perf = time.perf_counter


# -- memory ------------------------------------------------------------------------------------


def _status() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(rest.split()[0]) * 1024
    return out


class RssWatch:
    """Peak RSS growth from now on: resets the kernel's high-water mark, remembers current RSS."""

    def __init__(self) -> None:
        Path("/proc/self/clear_refs").write_text("5")
        self.base = _status()["VmRSS"]

    def growth(self) -> int:
        return _status()["VmHWM"] - self.base


# -- certificates ------------------------------------------------------------------------------


def make_certs(directory: Path) -> dict[str, str]:
    import trustme

    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    paths = {"trust": str(directory / "ca.pem")}
    for who in ("server", "client"):
        cert = ca.issue_cert("127.0.0.1", "localhost")
        cert.cert_chain_pems[0].write_to_path(str(directory / f"{who}.crt"))
        for extra in cert.cert_chain_pems[1:]:
            extra.write_to_path(str(directory / f"{who}.crt"), append=True)
        cert.private_key_pem.write_to_path(str(directory / f"{who}.key"))
        paths[who] = str(directory / who)
    return paths


def tls_config(certs: dict[str, str], who: str) -> TlsFiles:
    return TlsFiles(
        cert=Path(certs[who] + ".crt"), key=Path(certs[who] + ".key"), trust=Path(certs["trust"])
    )


def ssl_context(certs: dict[str, str], server: bool) -> ssl.SSLContext:
    cfg = tls_config(certs, "server" if server else "client")
    return cfg.ssl_server_context() if server else cfg.ssl_client_context()


# -- roles (each runs in its own process) --------------------------------------------------------


def _ready(port: int) -> None:
    print(json.dumps({"ready": port}), flush=True)


def _report(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def _listen() -> socket.socket:
    ls = socket.create_server(("127.0.0.1", 0))
    return ls


def recv_bare(a: dict[str, Any]) -> None:
    """Bare blocking socket (optionally TLS): recv_into a reused buffer, optionally write a file."""
    ls = _listen()
    watch = RssWatch()
    _ready(ls.getsockname()[1])
    raw, _ = ls.accept()
    sock: socket.socket = raw
    if a["tls"]:
        sock = ssl_context(a["certs"], True).wrap_socket(raw, server_side=True)
    fd = os.open(a["dest"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC) if a["file"] else -1
    digest: Any = None
    if a.get("sha"):
        digest = hashlib.sha256() if a["sha"] == "sha256" else blake3.blake3()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    total, got = a["size"], 0
    while got < total:
        n = sock.recv_into(view, min(CHUNK, total - got))
        if n == 0:
            raise EOFError
        if digest is not None:
            digest.update(view[:n])
        if fd >= 0:
            os.write(fd, view[:n])
        got += n
    if fd >= 0:
        os.close(fd)
    sock.sendall(b"k")
    sock.close()
    _report(rss=watch.growth())


def send_bare(a: dict[str, Any]) -> None:
    watch = RssWatch()
    t0 = perf()
    raw = socket.create_connection(("127.0.0.1", a["port"]))
    sock: socket.socket = raw
    if a["tls"]:
        sock = ssl_context(a["certs"], False).wrap_socket(raw, server_hostname="127.0.0.1")
    buf = bytearray(os.urandom(CHUNK)) if not a["file"] else bytearray(CHUNK)
    view = memoryview(buf)
    total, sent = a["size"], 0
    fd = os.open(a["source"], os.O_RDONLY) if a["file"] else -1
    while sent < total:
        n = min(CHUNK, total - sent)
        if fd >= 0:
            n = os.readv(fd, [view[:n]])
        sock.sendall(view[:n])
        sent += n
    if sock.recv(1) != b"k":
        raise EOFError
    dt = perf() - t0
    sock.close()
    _report(seconds=dt, rss=watch.growth())


def recv_impl(a: dict[str, Any]) -> None:
    tls = tls_config(a["certs"], "server") if a["scheme"] == "tls+tcp" else None
    results: list[bulk.ReceivedFile | bulk.BulkError] = []

    async def main() -> None:
        finished = trio.Event()

        def done(outcome: bulk.ReceivedFile | bulk.BulkError) -> None:
            results.append(outcome)
            finished.set()

        server = bulk.BulkServer(
            a["dest_dir"],
            identity=RECEIVER,
            authorize=lambda peer, offer: None if peer == SENDER.peer_id else "unknown peer",
            tls=tls,
            on_result=done,
        )
        address = "ipc://" + a["ipc"] if a["scheme"] == "ipc" else f"{a['scheme']}://127.0.0.1:0"
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(server.serve, address)
            watch = RssWatch()
            print(json.dumps({"ready": str(bound)}), flush=True)
            await finished.wait()
            nursery.cancel_scope.cancel()
        outcome = results[0]
        _report(
            rss=watch.growth(), ok=not isinstance(outcome, bulk.BulkError), detail=str(outcome)
        )

    trio.run(main)


def send_impl(a: dict[str, Any]) -> None:
    tls = tls_config(a["certs"], "client") if a["scheme"] == "tls+tcp" else None

    async def main() -> None:
        watch = RssWatch()
        t0 = perf()
        result = await bulk.send_file(
            a["source"],
            to=a["address"],
            identity=SENDER,
            peer=RECEIVER.peer_id,
            tls=tls,
            sha256=a.get("sha256"),
            blake3=a.get("blake3"),
            chunk_size=bulk.DEFAULT_CHUNK,  # what a node sends with (bare rows: CHUNK)
        )
        dt = perf() - t0
        assert result.size == a["size"]
        _report(seconds=dt, rss=watch.growth())

    trio.run(main)


def recv_nng(a: dict[str, Any]) -> None:
    import pynng

    async def main() -> None:
        with pynng.Pair0(listen="tcp://127.0.0.1:0", recv_max_size=0) as p:
            port = p.listeners[0].local_address.port
            watch = RssWatch()
            print(json.dumps({"ready": socket.ntohs(port)}), flush=True)
            got = 0
            while got < a["size"]:
                msg = await p.arecv()
                got += len(msg)
                del msg
            await p.asend(b"k")
            await trio.sleep(0.05)
            _report(rss=watch.growth())

    trio.run(main)


def send_nng(a: dict[str, Any]) -> None:
    import pynng

    async def main() -> None:
        watch = RssWatch()
        t0 = perf()
        with pynng.Pair0(dial=f"tcp://127.0.0.1:{a['port']}", recv_max_size=0) as p:
            data = os.urandom(a["chunk"])
            sent = 0
            while sent < a["size"]:
                await p.asend(data)
                sent += len(data)
            await p.arecv()
            dt = perf() - t0
        _report(seconds=dt, rss=watch.growth())

    trio.run(main)


def recv_trio(a: dict[str, Any]) -> None:
    async def main() -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        watch = RssWatch()
        _ready(listeners[0].socket.getsockname()[1])
        stream: trio.abc.Stream = await listeners[0].accept()
        if a["tls"]:
            stream = trio.SSLStream(stream, ssl_context(a["certs"], True), server_side=True)
        got = 0
        while got < a["size"]:
            data = await stream.receive_some(CHUNK)
            if not data:
                raise EOFError
            got += len(data)
        await stream.send_all(b"k")
        await stream.aclose()
        _report(rss=watch.growth())

    trio.run(main)


def send_trio(a: dict[str, Any]) -> None:
    async def main() -> None:
        watch = RssWatch()
        t0 = perf()
        stream: trio.abc.Stream = await trio.open_tcp_stream("127.0.0.1", a["port"])
        if a["tls"]:
            stream = trio.SSLStream(
                stream, ssl_context(a["certs"], False), server_hostname="127.0.0.1"
            )
        data = os.urandom(CHUNK)
        sent = 0
        while sent < a["size"]:
            await stream.send_all(data)
            sent += len(data)
        await stream.receive_some(1)
        dt = perf() - t0
        await stream.aclose()
        _report(seconds=dt, rss=watch.growth())

    trio.run(main)


ROLES: dict[str, Callable[[dict[str, Any]], None]] = {
    "recv_bare": recv_bare,
    "send_bare": send_bare,
    "recv_impl": recv_impl,
    "send_impl": send_impl,
    "recv_nng": recv_nng,
    "send_nng": send_nng,
    "recv_trio": recv_trio,
    "send_trio": send_trio,
}


# -- orchestration -----------------------------------------------------------------------------


def _spawn(role: str, args: dict[str, Any]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, "--role", role, "--args", json.dumps(args)],
        stdout=subprocess.PIPE,
        text=True,
    )


def _line(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait()
        raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} and no output")
    result: dict[str, Any] = json.loads(line)
    return result


def trial(kind: str, args: dict[str, Any]) -> dict[str, Any]:
    """One transfer: start the receiver, wait for its address, run the sender, collect both."""
    receiver = _spawn(f"recv_{kind}", args)
    ready = _line(receiver)["ready"]
    send_args = dict(args, port=ready, address=ready)
    sender = _spawn(f"send_{kind}", send_args)
    sent = _line(sender)
    got = _line(receiver)
    sender.wait()
    receiver.wait()
    if sender.returncode or receiver.returncode or not got.get("ok", True):
        raise RuntimeError(f"{kind} failed: {got}")
    return {"seconds": sent["seconds"], "rss_send": sent["rss"], "rss_recv": got["rss"]}


def _warm(path: Path) -> None:
    """Read ``path`` so it is in the page cache: this VM pages out file pages idle for a minute
    (DAMON), and a trial must measure the transfer, not the virtual disk."""
    buf = bytearray(MiB)
    fd = os.open(path, os.O_RDONLY)
    try:
        while os.readv(fd, [buf]):
            pass
    finally:
        os.close(fd)


class Row:
    def __init__(self, label: str, kind: str, args: dict[str, Any], cleanup: Path | None) -> None:
        self.label, self.kind, self.args, self.cleanup = label, kind, args, cleanup
        self.results: list[dict[str, Any]] = []

    def run(self) -> None:
        # Delete the previous output just before the trial, not after it: the kernel then
        # reuses those pages at once, instead of handing them back to the hypervisor (this VM
        # reports free pages to the host, and touching fresh pages again costs ~0.6 s per
        # 256 MiB, which is noise, not the code under test).
        if self.cleanup is not None:
            if self.cleanup.is_dir():
                for p in self.cleanup.iterdir():
                    p.unlink()
            else:
                self.cleanup.unlink(missing_ok=True)
        if self.kind == "impl" or self.args.get("file"):
            _warm(Path(self.args["source"]))
        self.results.append(trial(self.kind, self.args))

    def rate(self, size: int) -> float:
        seconds: float = statistics.median(r["seconds"] for r in self.results)
        return size / seconds / 1e9

    def rss(self) -> int:
        return max(max(int(r["rss_send"]), int(r["rss_recv"])) for r in self.results)

    def rates(self, size: int) -> str:
        return " ".join(f"{size / r['seconds'] / 1e9:.2f}" for r in self.results)


def _table(rows: list[Row], size: int) -> None:
    print(f"{'variant':38s} {'GB/s (median)':>14s} {'runs':>18s} {'peak RSS growth':>16s}")
    for row in rows:
        print(
            f"{row.label:38s} {row.rate(size):14.2f} {row.rates(size):>18s} "
            f"{row.rss() / MiB:12.1f} MiB"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="32 MiB smoke run")
    parser.add_argument("--survey", action="store_true", help="raw transports only (step 1)")
    parser.add_argument("--size-mib", type=int, default=None)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where files are written")
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--args", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.role:
        ROLES[opts.role](json.loads(opts.args))
        return

    size = (opts.size_mib or (32 if opts.quick else 256)) * MiB
    reps = opts.reps
    work = Path(tempfile.mkdtemp(prefix="bench-bulk-", dir=opts.dir))
    try:
        certs = make_certs(work)
        source = work / "source.bin"
        with source.open("wb") as f:
            for _ in range(size // MiB):
                f.write(os.urandom(MiB))
        sha = hashlib.sha256(source.read_bytes()).hexdigest()
        b3 = blake3.blake3(source.read_bytes()).hexdigest()
        dest_dir = work / "received"
        dest_dir.mkdir()
        base: dict[str, Any] = {
            "size": size,
            "certs": certs,
            "source": str(source),
            "dest": str(work / "bare.out"),
            "dest_dir": str(dest_dir),
            "blake3": b3,
            "chunk": CHUNK,
            "ipc": str(work / "bulk.sock"),
        }
        print(
            f"bench_bulk: {size // MiB} MiB, median of {reps}; CPython {platform.python_version()}, "
            f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, trio {version('trio')}, "
            f"pynng {version('pynng')}, {ssl.OPENSSL_VERSION}; files in {work}"
        )
        if opts.survey:
            nng = [
                Row(
                    f"pynng Pair0 under trio ({c} MiB msgs)",
                    "nng",
                    dict(base, chunk=c * MiB),
                    None,
                )
                for c in (1, 4, 16)
            ]
            rows = [
                Row(
                    "bare TCP mem (blocking, 1 MiB)",
                    "bare",
                    dict(base, tls=False, file=False),
                    None,
                ),
                Row("trio SocketStream mem (1 MiB)", "trio", dict(base, tls=False), None),
                *nng,
                Row("trio SSLStream mem (TLS 1.3 mutual)", "trio", dict(base, tls=True), None),
                Row("bare TLS mem (blocking ssl)", "bare", dict(base, tls=True, file=False), None),
                Row(
                    "bare TCP file->file",
                    "bare",
                    dict(base, tls=False, file=True),
                    work / "bare.out",
                ),
            ]
        else:
            rows = [
                Row("bare TCP mem (baseline)", "bare", dict(base, tls=False, file=False), None),
                Row(
                    "bare TCP file->file (no checks)",
                    "bare",
                    dict(base, tls=False, file=True),
                    work / "bare.out",
                ),
                Row(
                    "bare TCP mem + SHA-256 at receiver",
                    "bare",
                    dict(base, tls=False, file=False, sha="sha256"),
                    None,
                ),
                Row(
                    "bare TCP mem + BLAKE3 at receiver",
                    "bare",
                    dict(base, tls=False, file=False, sha="blake3"),
                    None,
                ),
                Row("bulk tcp://", "impl", dict(base, scheme="tcp"), dest_dir),
                Row(
                    "bulk tcp:// SHA-256 (a manifest's)",
                    "impl",
                    dict(base, scheme="tcp", blake3=None, sha256=sha),
                    dest_dir,
                ),
                Row(
                    "bulk tcp:// +hash at sender",
                    "impl",
                    dict(base, scheme="tcp", blake3=None),
                    dest_dir,
                ),
                Row("bulk ipc://", "impl", dict(base, scheme="ipc"), dest_dir),
                Row("bare TLS mem (baseline)", "bare", dict(base, tls=True, file=False), None),
                Row("bulk tls+tcp://", "impl", dict(base, scheme="tls+tcp"), dest_dir),
            ]
        # Warm-up (not counted): the VM is slow the first time it touches fresh pages.
        for row in rows:
            row.run()
            row.results.clear()
        for _ in range(reps):
            for row in rows:
                row.run()
        print()
        _table(rows, size)
        if not opts.survey:
            _verdicts(rows, size)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _verdicts(rows: list[Row], size: int) -> None:
    by = {row.label: row for row in rows}
    bare = by["bare TCP mem (baseline)"].rate(size)
    bare_file = by["bare TCP file->file (no checks)"].rate(size)
    bare_sha = by["bare TCP mem + SHA-256 at receiver"].rate(size)
    bare_b3 = by["bare TCP mem + BLAKE3 at receiver"].rate(size)
    bare_tls = by["bare TLS mem (baseline)"].rate(size)
    tcp = by["bulk tcp://"]
    tls = by["bulk tls+tcp://"]
    print()
    print(f"{'figure':60s} {'measured':>9s}  {'target':8s}")

    def check(label: str, value: float, target: float, higher: bool = True) -> None:
        ok = value >= target if higher else value <= target
        bound = f"{'>=' if higher else '<='} {target:g}"
        print(f"{label:60s} {value:9.2f}  {bound:8s} {'PASS' if ok else 'MISS'}")

    def info(label: str, value: float) -> None:
        print(f"{label:60s} {value:9.2f}  (info)")

    check("tcp: bulk / bare TCP mem (same run)", tcp.rate(size) / bare, 0.5)
    check("tcp: peak RSS growth, MiB (max of both sides)", tcp.rss() / MiB, 64, higher=False)
    info("tcp: bulk / bare TCP file->file copy", tcp.rate(size) / bare_file)
    info("tcp: bulk / bare TCP mem + BLAKE3 at receiver", tcp.rate(size) / bare_b3)
    info("tcp: bare TCP mem + SHA-256 / bare TCP mem", bare_sha / bare)
    info("tcp: bare TCP mem + BLAKE3 / bare TCP mem", bare_b3 / bare)
    info(
        "tcp, SHA-256 (a manifest's): bulk / bare TCP mem",
        by["bulk tcp:// SHA-256 (a manifest's)"].rate(size) / bare,
    )
    info("tls: bulk GB/s", tls.rate(size))
    info("tls: bulk / bare TCP mem", tls.rate(size) / bare)
    info("tls: bulk / bare TLS mem", tls.rate(size) / bare_tls)
    check("tls: peak RSS growth, MiB (max of both sides)", tls.rss() / MiB, 64, higher=False)
    for name in ("sha256", "blake3"):
        rate = _hash_rate(name)
        info(f"{name} alone, one core, GB/s", rate)
        info(f"{name} alone / bare TCP mem (ceiling for a copy it checks)", rate / bare)


def _hash_rate(name: str) -> float:
    data = os.urandom(64 * MiB)
    best = 0.0
    for _ in range(3):
        t0 = perf()
        (hashlib.sha256(data) if name == "sha256" else blake3.blake3(data)).digest()
        best = max(best, len(data) / (perf() - t0) / 1e9)
    return best


if __name__ == "__main__":
    main()
