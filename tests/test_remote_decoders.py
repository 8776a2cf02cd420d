"""Every decoder of bytes a stranger chose refuses hostile shapes with a reason, never raises.

Two halves. The fuzz: deep towers, wide containers and recursive values (``tests/hostile.py``)
go through each decoder of remote bytes (the envelope and its payload, which every socket of
every role opens, stored records, the bridge's JSON bodies, event-log lines at replay, and
config files and ``HYPHA_*`` values). The census: every call of a decoder in the package is
listed here, either with the fuzz target that covers it or with why its input is our own, so a
new decoder cannot be added without a fuzz.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import trio
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hypha_sm.config.layers import ConfigError
from hypha_sm.config.worker import load_worker_settings
from hypha_sm.datasets.manifest import DatasetError
from hypha_sm.datasets.manifest import decode as decode_manifest
from hypha_sm.log.codec import LogFormatError, decode_entry, decode_header, role_of
from hypha_sm.log.replay import split_log
from hypha_sm.roles.worker.bridge import JobBridge
from hypha_sm.roles.worker.core.role import WORKER
from hypha_sm.wire import messages as m
from hypha_sm.wire.bounds import MAX_DEPTH, json_problem, msgpack_problem, toml_problem
from hypha_sm.wire.envelope import (
    REASONS,
    VERSION,
    Envelope,
    Opened,
    Opener,
    Rejection,
    decode_payload,
    open_record,
    signing_bytes,
)
from hypha_sm.wire.identity import Identity
from tests.hostile import (
    CRASH_DEPTH,
    deep_json,
    deep_msgpack,
    deep_toml,
    hostile_msgpack,
    msgpack_tower,
    nested_values,
)

PACKAGE = Path(__file__).resolve().parent.parent / "hypha_sm"
#: Every remote decoder's fuzz includes a structure at least this deep (and the draws go there).
DEEPEST = 10_000
MALLORY = Identity.from_seed(bytes([66]) * 32)
NOW = 1_764_000_000.0
_enc = msgspec.msgpack.encode

# -- the census -------------------------------------------------------------------------------

#: Every function in the package that decodes bytes from outside, and the fuzz that covers it.
FUZZED = {
    "hypha_sm.wire.envelope:_verified": "envelope",
    "hypha_sm.wire.envelope:decode_payload": "envelope",
    "hypha_sm.net.session:_decode": "session_frame",
    "hypha_sm.log.codec:decode_header": "event_log",
    "hypha_sm.log.codec:decode_entry": "event_log",
    "hypha_sm.log.codec:role_of": "event_log",
    "hypha_sm.config.layers:load_settings": "config",
    "hypha_sm.roles.worker.bridge.app:JobBridge._read_json": "bridge",
    "hypha_sm.datasets.manifest:decode": "manifest",
    "hypha_sm.diloco.tensors:read_layout": "gradient_file",
    "hypha_sm.roles.ps.runtime:load_spec": "ps_spec",
}
#: Decoders whose input is our own, and why.
OWN_INPUT = {
    "hypha_sm.log.replay:_boundary": "snapshots this process encoded a line earlier",
    "hypha_sm.core.spec:parse_machine": "the machine files shipped in the package",
    "hypha_sm.sdk.bridge_client:_raise_for": "a job reading its own node's bridge",
    "hypha_sm.sdk.bridge_client:BridgeClient._post": "a job reading its own node's bridge",
    "hypha_sm.sdk.bridge_client:BridgeClient.receive": "a job reading its own node's bridge",
    "hypha_sm.sdk.bridge_client:BridgeClient.openapi": "a job reading its own node's bridge",
    "hypha_sm.demo_job:main": "the demo job reading the spec and files its node gave it",
    "hypha_sm.demo_job:slice_texts": "the demo job reading a slice its node verified",
    "hypha_sm.executors.diloco:main": "the training executor reading the spec its node gave it",
}
_DECODER_RECEIVER = re.compile(r"json|msgpack|toml|pickle|decoder|Decoder")
_DECODING = {"decode", "loads", "load", "convert", "model_validate_json", "validate_json"}


def package_sites(matches: Callable[[ast.AST], bool]) -> dict[str, list[int]]:
    """``module:function`` -> lines, for every node of the package's code that ``matches``."""
    found: dict[str, list[int]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)

        def walk(node: ast.AST, where: str, module: str = module) -> None:
            for child in ast.iter_child_nodes(node):
                name = where
                if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    name = f"{where}.{child.name}" if where else child.name
                if matches(child):
                    found.setdefault(f"{module}:{name}", []).append(getattr(child, "lineno", 0))
                walk(child, name)

        walk(ast.parse(path.read_text()), "")
    return found


def _decodes(node: ast.AST) -> bool:
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
        return False
    attr, receiver = node.func.attr, ast.unparse(node.func.value)
    return bool(attr in _DECODING and _DECODER_RECEIVER.search(receiver)) or (
        attr == "json" and not node.args
    )


def decoder_calls() -> dict[str, list[int]]:
    """``module:function`` -> lines, for every call in the package that decodes bytes."""
    return package_sites(_decodes)


def test_every_decoder_in_the_package_is_fuzzed_or_reads_only_our_own_bytes() -> None:
    """A new call of a decoder fails this test until it gets a fuzz target (or a reason)."""
    calls = decoder_calls()
    unlisted = {site: lines for site, lines in calls.items() if site not in FUZZED | OWN_INPUT}
    assert not unlisted, f"decoders without a fuzz target: {unlisted}"
    stale = (FUZZED.keys() | OWN_INPUT.keys()) - calls.keys()
    assert not stale, f"listed decoders that no longer exist: {stale}"
    assert set(FUZZED.values()) == set(TARGETS)


#: Every place a role opens a socket to strangers, and the test that sends the crash frame
#: (about 1.6 KB nested 1,000 deep) there over a real socket.
SOCKET_FACING = {
    "hypha_sm.roles.worker.node:WorkerNode.run": "hostile_frames:every_port_of_a_gateway_and_a_worker",
    "hypha_sm.roles.worker.node:WorkerNode._take_advertisements": (
        "hostile_frames:every_port_of_a_gateway_and_a_worker"
    ),
    "hypha_sm.roles.worker.run:_serve": "hostile_frames:every_port_of_a_gateway_and_a_worker",
    "hypha_sm.roles.worker.peers:PeerFiles.serve": "hostile_frames:every_port_of_a_gateway_and_a_worker",
    "hypha_sm.net.bulk.receive:BulkServer.serve": "hostile_frames:every_port_of_a_gateway_and_a_worker",
    "hypha_sm.roles.gateway.gateway:Gateway.run": "hostile_frames:every_port_of_a_gateway_and_a_worker",
    "hypha_sm.roles.scheduler.scheduler:Scheduler.run": "hostile_frames:a_scheduler_survives_the_frame",
    "hypha_sm.roles.data.node:DataNode.run": "hostile_frames:a_data_node_survives_the_frame",
    "hypha_sm.roles.worker.bridge.app:JobBridge.serve": "small_defects:the_bridge_refuses_deep_json",
    "hypha_sm.roles.worker.jobs:LocalExecutor._start.serve_bridge": (
        "small_defects:the_bridge_refuses_deep_json"
    ),
}
#: Listener-looking calls that are not: NNG's topic filter on a socket already counted.
NOT_LISTENERS = {"hypha_sm.net.transport.nng:Endpoint.subscribe"}


def _listens(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr in ("serve", "subscribe")
        and isinstance(node.ctx, ast.Load)
    ) or (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ("open_listener", "hypercorn_serve")
    )


def listener_sites() -> set[str]:
    """``module:function`` of every place that serves, subscribes or listens."""
    return set(package_sites(_listens)) - NOT_LISTENERS


def test_every_socket_a_role_opens_to_strangers_takes_the_crash_frame_in_a_test() -> None:
    """A new listener, subscription or server fails this test until a real-socket test sends
    the deep frame there; each named test exists."""
    import tests.test_hostile_frames
    import tests.test_small_defects

    modules = {
        "hostile_frames": tests.test_hostile_frames,
        "small_defects": tests.test_small_defects,
    }
    sites = listener_sites()
    assert sites == set(SOCKET_FACING), sites ^ set(SOCKET_FACING)
    for covered_by in set(SOCKET_FACING.values()):
        module, fragment = covered_by.split(":")
        names = [n for n in dir(modules[module]) if n.startswith("test_") and fragment in n]
        assert names, f"no test named like {covered_by}"


# -- the pre-decoding checks, table-driven ------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (_enc([1, [2, {"a": [3]}]]), None),
        (msgpack_tower(MAX_DEPTH), None),
        (msgpack_tower(MAX_DEPTH + 1), "too_deep"),
        (msgpack_tower(CRASH_DEPTH, b"\x81\xa1k"), "too_deep"),
        (msgpack_tower(CRASH_DEPTH)[:500], "too_deep"),
        (b"\x91" * 5, "truncated"),
        (b"\xdd\x00\x01\x00\x00" + b"\x01" * 65536, "too_many_items"),
        (b"\xdf\x7f\xff\xff\xff", "too_many_items"),
        (b"\xc1", "invalid"),
        (_enc({"s": "x" * 100_000, "b": b"y" * 100_000}), None),
        (b"\x90", None),
        (b"\xc4", "truncated"),
    ],
    ids=lambda v: v if isinstance(v, str) or v is None else f"{len(v)}B",
)
def test_msgpack_shape_check(data: bytes, problem: str | None) -> None:
    """Nesting, item counts and truncation are found by walking headers only."""
    assert msgpack_problem(data) == problem


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (b'{"a": [1, {"b": []}]}', None),
        (b"[" * 64 + b"]" * 64, None),
        (b"[" * 65 + b"]" * 65, "too_deep"),
        (b'["' + b"[" * 1000 + b'"]', None),  # brackets inside a string are text
        (b'["\\"' + b"[" * 1000 + b'"]', None),  # ... also after an escaped quote
        (b"[" * 100_000, "too_deep"),
        (b'{"a":' * 70 + b"1" + b"}" * 70, "too_deep"),
        (b"]]]][[[[", "too_deep"),
        (b"12", None),
    ],
    ids=lambda v: v if isinstance(v, str) or v is None else f"{len(v)}B",
)
def test_json_shape_check(text: bytes, problem: str | None) -> None:
    """Depth is counted outside string literals; unbalanced brackets count as deep."""
    assert json_problem(text) == problem


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[a]\nx = [[1], [2]]\n[[b]]\ny = {z = 1}\n", None),
        ("x = " + "[" * 100 + "]" * 100, "too_deep"),
        ('x = "' + "[" * 100 + '"\n', None),
        ("# " + "[" * 100 + "\n", None),
        ("\n".join(f"[t{i}]" for i in range(200)), None),
    ],
)
def test_toml_shape_check(text: str, problem: str | None) -> None:
    """Inline arrays and tables count; strings, comments and table headers do not."""
    assert toml_problem(text) == problem


# -- the fuzz targets ---------------------------------------------------------------------------


def _signed_envelope(payload: bytes, *, extra: bytes | None = None) -> bytes:
    """An envelope with a valid signature over ``payload``, maybe with a 7th element."""
    sender = MALLORY.peer_id.raw
    ts, msg_id = int(NOW * 1000), bytes(range(16))
    sig = MALLORY.sign(signing_bytes(sender, ts, msg_id, payload))
    if extra is None:
        return _enc(Envelope(VERSION, sender, ts, msg_id, payload, sig))
    return b"\x97" + b"".join(_enc(x) for x in (VERSION, sender, ts, msg_id, payload, sig)) + extra


def _placements(hostile: bytes) -> list[bytes]:
    """The hostile object wherever a stranger can put it in a frame."""
    unsigned = b"\x97" + b"".join(
        _enc(x) for x in (VERSION, b"\x00" * 38, 0, bytes(16), b"", bytes(64))
    )
    renew = _enc(m.RenewLease("lease-1"))
    return [
        hostile,  # the whole frame
        unsigned + hostile,  # an extra element, all-zero signature (the crash report's frame)
        _signed_envelope(hostile),  # the whole payload, validly signed
        _signed_envelope(renew, extra=hostile),  # an extra element of a signed envelope
        _signed_envelope(b"\x83" + renew[1:] + _enc("x") + hostile),  # an unknown field
        _signed_envelope(b"\x82\xa1t\xa5renew\xa8lease_id" + hostile),  # a field's value
    ]


def fuzz_envelope(hostile: bytes) -> None:
    for frame in _placements(hostile):
        result = Opener().open(frame, NOW)
        assert isinstance(result, Opened | Rejection)
        if isinstance(result, Rejection):
            assert result.reason in REASONS
        assert isinstance(open_record(frame), Opened | Rejection)


HEADER = (
    b'{"format":"hypha-sm/event-log","version":1,"machines_hash":"x","engine_version":"0",'
    b'"seed":"00","policy":{"capacity":{"gpu":0,"cpu":1,"memory":1,"storage":1}}}\n'
)


def fuzz_event_log(text: bytes) -> None:
    for line in (text, b'{"seq":1,"mono":0,"wall":0,"event":' + text + b"}"):
        with pytest.raises(LogFormatError):
            decode_entry(line, 2, WORKER)
        with pytest.raises(LogFormatError):
            decode_header(line, WORKER)
        with pytest.raises(LogFormatError):
            role_of(line)
        _, entries = split_log([HEADER, line + b"\n"], WORKER)
        with pytest.raises(LogFormatError):
            list(entries)


def fuzz_config(text: str, tmp: Path) -> None:
    path = tmp / "worker.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"nested deeper|not valid TOML"):
        load_worker_settings(path, {})
    deep = "[" * 200 + "]" * 200
    os.environ["HYPHA_GATEWAY_ADDRESSES"] = deep
    try:
        with pytest.raises(ConfigError, match="HYPHA_GATEWAY_ADDRESSES: nested deeper"):
            load_worker_settings(None, {})
    finally:
        del os.environ["HYPHA_GATEWAY_ADDRESSES"]


def fuzz_bridge(body: bytes, tmp: Path) -> None:
    bridge = JobBridge(work_dir=tmp, socket_path=tmp / "unused.sock", job_id="j")

    async def post() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=bridge.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://hypha") as client:
            return [
                await client.post(route, content=body)
                for route in ("/status/send", "/resources/fetch", "/resources/send")
            ]

    for reply in trio.run(post):
        assert reply.status_code == 400, reply.text
        assert reply.json()["code"] in {"invalid_json", "invalid_request"}


def fuzz_manifest(text: bytes) -> None:
    """A dataset.json (a data node reads one it may have been handed) is one error line."""
    for data in (text, b'{"format":"hypha-sm/dataset","version":1,"keys":' + text + b"}"):
        with pytest.raises(DatasetError):
            decode_manifest(data)


TARGETS = (
    "envelope",
    "session_frame",
    "event_log",
    "config",
    "bridge",
    "manifest",
    "gradient_file",
    "ps_spec",
)


@given(
    st.binary(max_size=64) | nested_values().map(lambda v: json.dumps(v, default=repr).encode())
)
@settings(max_examples=200, deadline=None)
@example(b'{"a":' * 5000 + b"1" + b"}" * 5000)
def test_fuzz_gradient_files_are_a_layout_error_or_a_layout(
    tmp_path_factory: Any, raw: bytes
) -> None:
    """A worker's pseudo-gradient file with any header (towers, garbage, lies about sizes):
    the parameter server reads a layout or refuses it with LayoutError, never another error."""
    from hypha_sm.diloco.tensors import LayoutError, read_layout

    path = tmp_path_factory.mktemp("g") / "file"
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + b"\0" * 16)
    with contextlib.suppress(LayoutError):
        read_layout(path)


@given(st.text(max_size=64) | nested_values().map(lambda v: json.dumps(v, default=repr)))
@settings(max_examples=200, deadline=None)
@example('{"executor":' * 5000 + "1" + "}" * 5000)
def test_fuzz_parameter_server_specs_are_a_spec_error_or_a_plan(raw: str) -> None:
    """A dispatched spec the parameter server cannot use is a JobSpecError (a start failure
    with a reason), never another exception."""
    from hypha_sm.roles.ps.runtime import JobSpecError, load_spec

    with contextlib.suppress(JobSpecError):
        load_spec(raw)


@given(st.one_of(hostile_msgpack(), nested_values().map(_enc)))
@settings(max_examples=200)
@example(msgpack_tower(DEEPEST))  # the deepest, whatever the draws reached
@example(msgpack_tower(DEEPEST, b"\x81\xa1k"))
@example(b"\xdd" + (60_000).to_bytes(4, "big") + b"\x90" * 60_000)  # wide: 60,000 items
def test_fuzz_envelope_and_payload_refuse_deep_and_wide_structures(hostile: bytes) -> None:
    """Towers, wide containers and recursive values, in every place of a frame (whole,
    extra element, signed payload, unknown field, field value): a message or a counted
    rejection, never an exception."""
    fuzz_envelope(hostile)


def fuzz_session_frame(hostile: bytes) -> None:
    """The hostile object in every place of a sealed frame, and sealed as its payload."""
    from hypha_sm.net import session as sn

    keys = (b"k" * 32, b"K" * 32)
    table = sn.SessionTable()
    table.add(MALLORY.peer_id, b"S" * 16, keys, NOW + 60, 10)
    client = sn.ClientSession.from_keys(b"S" * 16, keys, NOW + 60, 10)
    head = b"\x94" + _enc(2) + _enc(b"S" * 16) + _enc(0)
    for frame in (hostile, head + hostile, b"\x95" + head[1:] + _enc(b"") + hostile):
        result = table.open(frame, NOW)
        assert isinstance(result, tuple)
        assert result[0].reason in ("malformed", "oversized", *sn.REASONS)
        assert isinstance(client.open_answer(frame, 0), Rejection)
    _, sealed = client.seal(hostile)  # a stranger's session: the payload decoder is next
    opened = table.open(sealed, NOW)
    assert isinstance(opened, sn.OpenedFrame)
    assert isinstance(decode_payload(opened.payload), Rejection | m.Message)


@given(st.one_of(hostile_msgpack(), nested_values().map(_enc)))
@settings(max_examples=200)
@example(msgpack_tower(DEEPEST))
@example(b"\xdd" + (60_000).to_bytes(4, "big") + b"\x90" * 60_000)  # wide: 60,000 items
def test_fuzz_sealed_frames_refuse_deep_and_wide_structures(hostile: bytes) -> None:
    """Towers, wide containers and recursive values as a whole frame, as a field of one, or
    sealed as the payload of a valid session: a counted rejection or a message, never an
    exception."""
    fuzz_session_frame(hostile)


def test_the_crash_frame_of_the_report_is_refused_before_decoding() -> None:
    """About 1.6 KB nested 1,000 deep as a 7th envelope element with a zero signature."""
    unsigned = b"\x97" + b"".join(
        _enc(x) for x in (VERSION, b"\x00" * 38, 0, bytes(16), b"", bytes(64))
    )
    frame = unsigned + msgpack_tower(CRASH_DEPTH, b"\x81\xa1k")
    assert 1000 < len(frame) < 5000
    opener = Opener()
    assert opener.open(frame, NOW) == Rejection("too_deep", "too_deep")
    assert opener.rejected["too_deep"] == 1


@given(deep_json())
@settings(max_examples=60)
@example(b"[" * DEEPEST + b"]" * DEEPEST)
@example(b'{"a":' * DEEPEST + b"1" + b"}" * DEEPEST)
def test_fuzz_event_log_lines_nested_deep_are_a_format_error(text: bytes) -> None:
    """A damaged log line nested thousands deep ends replay with a line-numbered error."""
    fuzz_event_log(text)


@given(deep_json())
@settings(max_examples=60)
@example(b"[" * DEEPEST + b"]" * DEEPEST)
@example(b'{"a":' * DEEPEST + b"1" + b"}" * DEEPEST)
def test_fuzz_dataset_manifests_nested_deep_are_a_dataset_error(text: bytes) -> None:
    fuzz_manifest(text)


@given(deep_toml())
@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@example(text="x = " + "[" * DEEPEST + "1" + "]" * DEEPEST + "\n")
@example(text="x = " + "{a = " * DEEPEST + "1" + "}" * DEEPEST + "\n")
def test_fuzz_config_nested_deep_is_a_config_error(tmp_path: Path, text: str) -> None:
    """A config file (or HYPHA_* value) nested deep is one error line, not a traceback."""
    fuzz_config(text, tmp_path)


@given(st.one_of(deep_json(), deep_msgpack()))
@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@example(body=b"[" * DEEPEST + b"]" * DEEPEST)
@example(body=b"[" * 500_000)  # as deep as the 1 MiB body limit allows, never closed
def test_fuzz_bridge_bodies_nested_deep_are_a_400(tmp_path: Path, body: bytes) -> None:
    """Deep JSON (or any bytes) to the bridge's routes is a 400 with a JSON error."""
    fuzz_bridge(body, tmp_path)


def test_decoded_messages_nest_no_deeper_than_the_limit() -> None:
    """Every message we send is within the limits we enforce, with room to spare."""
    from hypha_sm.wire import vectors

    for name, message in vectors.EXAMPLES.items():
        payload = _enc(message)
        assert msgpack_problem(payload, max_depth=MAX_DEPTH // 2) is None, name
    metrics = m.Progress("j", m.RoundMetrics(1, {f"k{i}": 1.0 for i in range(256)}))
    assert msgpack_problem(_enc(metrics)) is None
