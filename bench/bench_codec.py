"""Wire codecs compared, to justify the message codec: msgspec msgpack (the current choice).

Run from the repository root (about 25 s on the 2-core box):

    python bench/bench_codec.py   # in the project's .venv

Candidates, each encoding and decoding into the typed message set of hypha_sm/wire/messages.py:

1. msgspec msgpack: ``msgspec.msgpack.Encoder`` / ``Decoder(Message)`` (what envelope.py uses).
2. msgspec JSON: ``msgspec.json.Encoder`` / ``Decoder(Message)``.
3. CBOR via cbor2: ``cbor2.dumps(msgspec.to_builtins(msg))``. "raw" is ``dumps``/``loads`` of the
   dict form alone; "+convert" adds what a receiver must do: ``msgspec.convert(obj, Message)``;
   "+conv(tag)" looks the struct class up by the tag first (``convert`` rebuilds the type info
   of a union on every call, and that dominates "+convert").
4. pydantic v2 (optional; skipped if not installed): equivalent ``BaseModel`` classes with a
   discriminated union on ``t``, ``TypeAdapter(union).validate_json`` / ``dump_json``.

Sections: (1) encode/decode ns per op and encoded size, net of the loop + call overhead, each
repetition paired with msgspec msgpack on the same message in the same repetition and the ratio
taken per repetition, then the median of 9 (the box is a noisy 2-core machine: compare ratios,
not raw numbers); (2) the signed envelope path (seal / ``Opener.open``) split into Ed25519 and
codec costs; (3) strictness probes (what each typed decoder accepts); (4) robustness: 10,000
random byte strings and 10,000 mutations of valid encodings fed to each typed decoder, counting
exceptions by type; anything outside the decoder's documented error types would crash a node.
"""

import functools
import gc
import itertools
import os
import platform
import random
import statistics
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cbor2
import msgspec

from hypha_sm.wire.envelope import Envelope, Opened, Opener, seal, signing_bytes
from hypha_sm.wire.identity import Identity, PeerId
from hypha_sm.wire.messages import (
    Advertisement,
    Executor,
    LeaseRenewed,
    Message,
    Progress,
    RenewLease,
    Resources,
    RoundMetrics,
)

try:
    import pydantic
    from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
except ImportError:  # pragma: no cover - pydantic is optional for this benchmark
    pydantic = None

SEED = 20261124
REPS = 9  # codec table repetitions (median)
ENV_REPS = 5  # envelope repetitions
TARGET_S = 0.04  # wall time of one timed loop
ENV_N = 400  # envelopes opened per repetition (each needs a fresh message id)
FUZZ_N = 10_000
NOW = 1_764_000_000.0

# -- the messages ----------------------------------------------------------------------------


def sample_messages() -> dict[str, Message]:
    rng = random.Random(SEED)

    def uid() -> str:
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))

    scheduler = str(Identity.from_seed(bytes(range(32))).peer_id)
    assert len(scheduler) == 52
    metrics = {
        name: rng.uniform(0.0, 10.0)
        for name in (
            "loss",
            "perplexity",
            "grad_norm",
            "learning_rate",
            "tokens_per_second",
            "samples_seen",
            "outer_step_seconds",
            "inner_loss",
        )
    }
    return {
        "Advertisement": Advertisement(
            request_id=uid(),
            scheduler=scheduler,
            reply_address="tcp://10.20.3.17:47011",
            resources=Resources(gpu=24.0, cpu=8.0, memory=64.0, storage=200.0),
            executors=(
                Executor(cls="train", name="diloco-transformer"),
                Executor(cls="aggregate", name="parameter-server"),
            ),
            bid=0.75,
            expires=NOW + 30.125,
        ),
        "RenewLease": RenewLease(lease_id=uid()),
        "LeaseRenewed": LeaseRenewed(lease_id=uid(), expires=NOW + 60.5),
        "Progress": Progress(job_id=uid(), progress=RoundMetrics(round=17, metrics=metrics)),
    }


# -- pydantic equivalents (only the four measured messages) ------------------------------------

if pydantic is not None:

    class PResources(BaseModel):
        model_config = ConfigDict(frozen=True)
        gpu: float = 0.0
        cpu: float = 0.0
        memory: float = 0.0
        storage: float = 0.0

    class PExecutor(BaseModel):
        model_config = ConfigDict(frozen=True, populate_by_name=True)
        cls: str = Field(alias="class")
        name: str

    class PAdvertisement(BaseModel):
        model_config = ConfigDict(frozen=True)
        t: Literal["advertisement"] = "advertisement"
        request_id: str
        scheduler: str
        reply_address: str
        resources: PResources
        executors: tuple[PExecutor, ...]
        bid: float
        expires: float

    class PRenewLease(BaseModel):
        model_config = ConfigDict(frozen=True)
        t: Literal["renew_lease"] = "renew_lease"
        lease_id: str

    class PLeaseRenewed(BaseModel):
        model_config = ConfigDict(frozen=True)
        t: Literal["lease_renewed"] = "lease_renewed"
        lease_id: str
        expires: float

    class PBatchStatus(BaseModel):
        model_config = ConfigDict(frozen=True)
        type: Literal["status"] = "status"
        batch_size: int

    class PRoundMetrics(BaseModel):
        model_config = ConfigDict(frozen=True)
        type: Literal["metrics"] = "metrics"
        round: int
        metrics: dict[str, float]

    class PProgress(BaseModel):
        model_config = ConfigDict(frozen=True)
        t: Literal["progress"] = "progress"
        job_id: str
        progress: Annotated[PBatchStatus | PRoundMetrics, Field(discriminator="type")]

    PMessage = Annotated[
        PAdvertisement | PRenewLease | PLeaseRenewed | PProgress, Field(discriminator="t")
    ]
    P_ADAPTER: Any = TypeAdapter(PMessage)


# -- the codecs ------------------------------------------------------------------------------


class Codec:
    """One candidate: how a sender encodes, how a receiver decodes, what it may raise."""

    def __init__(
        self,
        name: str,
        encode: Callable[[Any], bytes],
        decode: Callable[[bytes], Any],
        errors: tuple[type[BaseException], ...],
        to_native: Callable[[Message], Any] = lambda m: m,
    ) -> None:
        self.name = name
        self.encode = encode
        self.decode = decode
        self.errors = errors
        self.to_native = to_native  # the object a sender holds before encoding


def make_codecs() -> list[Codec]:
    mp_enc, mp_dec = msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder(Message)
    js_enc, js_dec = msgspec.json.Encoder(), msgspec.json.Decoder(Message)
    to_builtins, convert = msgspec.to_builtins, msgspec.convert
    dumps, loads = cbor2.dumps, cbor2.loads
    keep = (bytes, bytearray)  # bytes stay bytes in CBOR (to_builtins would base64 them)

    def cbor_encode(m: Message) -> bytes:
        return dumps(to_builtins(m, builtin_types=keep))

    def cbor_decode(b: bytes) -> Message:
        return convert(loads(b), Message)

    by_tag = {cls.__struct_config__.tag: cls for cls in get_args(Message)}

    def cbor_decode_by_tag(b: bytes) -> Message:
        # convert(obj, Message) rebuilds the union's type info on every call; dispatching on
        # the tag first converts to one struct class. Bad tags take the slow path for its error.
        obj = loads(b)
        if type(obj) is dict:
            tag = obj.get("t")
            cls = by_tag.get(tag) if type(tag) is str else None
            if cls is not None:
                return convert(obj, cls)
        return convert(obj, Message)

    codecs = [
        Codec("msgspec msgpack", mp_enc.encode, mp_dec.decode, (msgspec.DecodeError,)),
        Codec("msgspec json", js_enc.encode, js_dec.decode, (msgspec.DecodeError,)),
        Codec(
            "cbor2 raw",
            dumps,
            loads,
            (cbor2.CBORDecodeError,),
            to_native=lambda m: to_builtins(m, builtin_types=keep),
        ),
        Codec(
            "cbor2 +convert",
            cbor_encode,
            cbor_decode,
            (cbor2.CBORDecodeError, msgspec.ValidationError),
        ),
        Codec(
            "cbor2 +conv(tag)",
            cbor_encode,
            cbor_decode_by_tag,
            (cbor2.CBORDecodeError, msgspec.ValidationError),
        ),
    ]
    if pydantic is not None:
        dump_json = P_ADAPTER.dump_json

        def pyd_encode(m: Any) -> bytes:
            return dump_json(m, by_alias=True)

        codecs.append(
            Codec(
                "pydantic v2",
                pyd_encode,
                P_ADAPTER.validate_json,
                (pydantic.ValidationError,),
                to_native=lambda m: P_ADAPTER.validate_json(msgspec.json.encode(m)),
            )
        )
    return codecs


def check_equivalence(codecs: list[Codec], messages: dict[str, Message]) -> None:
    """Every typed codec round-trips every message to the same msgspec struct."""
    for c in codecs:
        for name, m in messages.items():
            wire = c.encode(c.to_native(m))
            back = c.decode(wire)
            if c.name == "pydantic v2":
                back = msgspec.json.decode(wire, type=Message)  # its JSON is ours, too
                assert c.decode(wire) == c.to_native(m), name
            elif c.name == "cbor2 raw":
                back = msgspec.convert(back, Message)
            assert back == m, (c.name, name)


# -- timing ----------------------------------------------------------------------------------


def per_op(fn: Callable[[Any], Any], arg: Any, n: int) -> float:
    """ns per call of ``fn(arg)`` over ``n`` calls, GC off (collected before)."""
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter_ns()
        for _ in itertools.repeat(None, n):
            fn(arg)
        return (time.perf_counter_ns() - start) / n
    finally:
        gc.enable()


def calibrate(fn: Callable[[Any], Any], arg: Any) -> int:
    n = 64
    while True:
        start = time.perf_counter()
        for _ in itertools.repeat(None, n):
            fn(arg)
        took = time.perf_counter() - start
        if took > TARGET_S / 8:
            return max(64, int(n * TARGET_S / took))
        n *= 4


def codec_table(codecs: list[Codec], messages: dict[str, Message]) -> list[dict[str, Any]]:
    cases = []  # (codec, message name, op, fn, arg)
    sizes: dict[tuple[str, str], int] = {}
    for c in codecs:
        for name, m in messages.items():
            native = c.to_native(m)
            wire = c.encode(native)
            sizes[c.name, name] = len(wire)
            cases.append((c.name, name, "enc", c.encode, native))
            cases.append((c.name, name, "dec", c.decode, wire))
    iters = {(c, m, op): calibrate(fn, arg) for c, m, op, fn, arg in cases}
    overhead_n = calibrate(id, None)
    rng = random.Random(SEED)
    samples: dict[tuple[str, str, str], list[float]] = {k: [] for k in iters}
    gross: dict[tuple[str, str, str], list[float]] = {k: [] for k in iters}
    ratios: dict[tuple[str, str, str], list[float]] = {k: [] for k in iters}
    overheads = []
    for _ in range(REPS):
        order = cases[:]
        rng.shuffle(order)
        overhead = per_op(id, None, overhead_n)  # loop + one C call, same repetition
        overheads.append(overhead)
        this: dict[tuple[str, str, str], float] = {}
        for c, m, op, fn, arg in order:
            ns = per_op(fn, arg, iters[c, m, op])
            gross[c, m, op].append(ns)
            this[c, m, op] = max(1.0, ns - overhead)
        for (c, m, op), ns in this.items():
            samples[c, m, op].append(ns)
            ratios[c, m, op].append(ns / this["msgspec msgpack", m, op])
    rows: list[dict[str, Any]] = [
        {
            "codec": c.name,
            "message": m,
            "enc": statistics.median(samples[c.name, m, "enc"]),
            "dec": statistics.median(samples[c.name, m, "dec"]),
            "size": sizes[c.name, m],
            "enc_x": statistics.median(ratios[c.name, m, "enc"]),
            "dec_x": statistics.median(ratios[c.name, m, "dec"]),
            "size_x": sizes[c.name, m] / sizes["msgspec msgpack", m],
            "spread": max(_spread(gross[c.name, m, "enc"]), _spread(gross[c.name, m, "dec"])),
        }
        for c in codecs
        for m in messages
    ]
    rows.append({"overhead": statistics.median(overheads)})
    return rows


def _spread(xs: list[float]) -> float:
    """(max - min) / median, for the noise column."""
    return (max(xs) - min(xs)) / statistics.median(xs)


def geomean(xs: list[float]) -> float:
    return statistics.geometric_mean(xs)


def print_codec_table(rows: list[dict[str, Any]]) -> None:
    overhead = rows.pop()["overhead"]
    print(
        f"\n1. Codecs: ns per op (median of {REPS}, net of {overhead:.0f} ns loop+call overhead); "
        "ratios = per-repetition ratio to msgspec msgpack, median"
    )
    head = (
        f"{'codec':<17} {'message':<13} {'encode ns':>10} {'decode ns':>10} {'size B':>7}"
        f"  {'enc x':>6} {'dec x':>6} {'size x':>6}  {'noise':>5}"
    )
    print(head)
    print("-" * len(head))
    last = None
    for r in rows:
        if last is not None and r["codec"] != last:
            print()
        last = r["codec"]
        print(
            f"{r['codec']:<17} {r['message']:<13} {r['enc']:>10,.0f} {r['dec']:>10,.0f}"
            f" {r['size']:>7}  {r['enc_x']:>6.2f} {r['dec_x']:>6.2f} {r['size_x']:>6.2f}"
            f"  {r['spread']:>5.0%}"
        )
    print("\ngeometric mean over the four messages (x msgspec msgpack):")
    for codec in dict.fromkeys(r["codec"] for r in rows):
        mine = [r for r in rows if r["codec"] == codec]
        print(
            f"  {codec:<17} encode {geomean([r['enc_x'] for r in mine]):5.2f}x"
            f"   decode {geomean([r['dec_x'] for r in mine]):5.2f}x"
            f"   size {geomean([r['size_x'] for r in mine]):5.2f}x"
        )
    members = len(get_args(Message))
    print(
        f"  cbor2 +convert: msgspec.convert(obj, Message) rebuilds the {members}-member union's"
        " type info per call;\n  +conv(tag) converts to the class named by the tag (what a"
        " receiver would write), so it is the fair CBOR figure."
    )
    print(
        "  (noise = (max-min)/median of the gross per-op times over the repetitions, worse of enc/dec)"
    )


# -- the signed envelope path ----------------------------------------------------------------


def envelope_path(messages: dict[str, Message]) -> None:
    ident = Identity.from_seed(bytes(range(32)))
    sender = ident.peer_id.raw
    rng = random.Random(SEED + 1)
    payload_enc = msgspec.msgpack.Encoder()
    env_enc = msgspec.msgpack.Encoder()
    env_dec = msgspec.msgpack.Decoder(Envelope)
    payload_dec = msgspec.msgpack.Decoder(Message)
    ts = int(NOW * 1000)
    print(
        f"\n2. Signed envelope, msgspec msgpack + Ed25519 (us per op, median of {ENV_REPS};"
        f" open = {ENV_N} distinct envelopes through one Opener)"
    )
    head = (
        f"{'message':<13} {'env B':>6} {'seal':>7} {'sign':>7} {'codec':>7} {'codec%':>7}"
        f"   {'open':>7} {'verify':>7} {'codec':>7} {'codec%':>7}"
    )
    print(head)
    print("-" * len(head))
    for name, m in messages.items():
        msg_id = rng.randbytes(16)
        payload = payload_enc.encode(m)
        data = signing_bytes(sender, ts, msg_id, payload)
        sig = ident.sign(data)
        env = Envelope(1, sender, ts, msg_id, payload, sig)
        wire = env_enc.encode(env)
        assert wire == seal(ident, m, NOW, msg_id)
        sealed = [seal(ident, m, NOW, rng.randbytes(16)) for _ in range(ENV_N)]
        peer = PeerId.from_bytes(sender)
        t: dict[str, list[float]] = {
            k: []
            for k in (
                "seal",
                "sign",
                "pl_enc",
                "env_enc",
                "open",
                "verify",
                "env_dec",
                "pl_dec",
                "peer",
            )
        }
        n_fast = 2000
        for _ in range(ENV_REPS):
            t["seal"].append(per_op(functools.partial(seal, ident, m, NOW), msg_id, ENV_N))
            t["sign"].append(per_op(ident.sign, data, ENV_N))
            t["pl_enc"].append(per_op(payload_enc.encode, m, n_fast))
            t["env_enc"].append(per_op(env_enc.encode, env, n_fast))
            opener = Opener(max_skew=30.0, replay_capacity=ENV_N + 1)
            it = iter(sealed)
            gc.collect()
            gc.disable()
            start = time.perf_counter_ns()
            for w in it:
                res = opener.open(w, NOW)
            t["open"].append((time.perf_counter_ns() - start) / ENV_N)
            gc.enable()
            assert isinstance(res, Opened), res
            assert opener.accepted == ENV_N
            t["verify"].append(per_op(functools.partial(peer.verify, sig), data, ENV_N))
            t["env_dec"].append(per_op(env_dec.decode, wire, n_fast))
            t["pl_dec"].append(per_op(payload_dec.decode, payload, n_fast))
            t["peer"].append(per_op(PeerId.from_bytes, sender, n_fast))
        med = {k: statistics.median(v) / 1000 for k, v in t.items()}
        seal_codec = med["pl_enc"] + med["env_enc"]
        open_codec = med["env_dec"] + med["pl_dec"]
        print(
            f"{name:<13} {len(wire):>6} {med['seal']:>7.2f} {med['sign']:>7.2f}"
            f" {seal_codec:>7.2f} {seal_codec / med['seal']:>7.1%}"
            f"   {med['open']:>7.2f} {med['verify']:>7.2f} {open_codec:>7.2f}"
            f" {open_codec / med['open']:>7.1%}"
        )
    print(
        "  seal = encode payload + sign + encode envelope; codec = payload + envelope encode.\n"
        "  open = decode envelope, parse sender, verify (key load + Ed25519), replay guard,"
        " decode payload;\n  codec = envelope + payload decode. The rest is Ed25519 and"
        " Python glue; swapping the codec moves only the codec column."
    )


# -- strictness probes -----------------------------------------------------------------------

LEASE = "6f1c2a9e-2d7b-4c55-9a3e-0d8f6b1e4c21"
PROBES: list[tuple[str, Any, bool]] = [
    # (what, the message as builtins, should a strict receiver accept it?)
    ("well-formed LeaseRenewed", {"t": "lease_renewed", "lease_id": LEASE, "expires": 1.5}, True),
    ("int for float (expires=2)", {"t": "lease_renewed", "lease_id": LEASE, "expires": 2}, True),
    ("unknown extra field", {"t": "renew_lease", "lease_id": LEASE, "x": 1}, True),
    ("string for float", {"t": "lease_renewed", "lease_id": LEASE, "expires": "1.5"}, False),
    ("bool for float", {"t": "lease_renewed", "lease_id": LEASE, "expires": True}, False),
    ("int for str (lease_id=7)", {"t": "renew_lease", "lease_id": 7}, False),
    (
        "float 17.0 for int round",
        {
            "t": "progress",
            "job_id": LEASE,
            "progress": {"type": "metrics", "round": 17.0, "metrics": {}},
        },
        False,
    ),
    (
        "string '17' for int round",
        {
            "t": "progress",
            "job_id": LEASE,
            "progress": {"type": "metrics", "round": "17", "metrics": {}},
        },
        False,
    ),
    ("unknown tag", {"t": "nope", "lease_id": LEASE}, False),
    ("missing tag", {"lease_id": LEASE}, False),
    ("missing required field", {"t": "lease_renewed", "lease_id": LEASE}, False),
    ("trailing bytes after message", {"t": "renew_lease", "lease_id": LEASE}, False),
]


def strictness(codecs: list[Codec]) -> None:
    wire_of = {
        "msgspec msgpack": msgspec.msgpack.encode,
        "msgspec json": msgspec.json.encode,
        "cbor2 +convert": cbor2.dumps,
        "cbor2 +conv(tag)": cbor2.dumps,
        "pydantic v2": msgspec.json.encode,
    }
    cols = [c for c in codecs if c.name in wire_of]
    if pydantic is not None:
        strict = Codec(
            "pydantic strict",
            P_ADAPTER.dump_json,
            lambda b: P_ADAPTER.validate_json(b, strict=True),
            (pydantic.ValidationError,),
        )
        wire_of["pydantic strict"] = msgspec.json.encode
        cols.append(strict)
    print("\n3. Strictness: does the typed decoder accept it? (ok = accepted, - = rejected)")
    head = f"{'input':<30} {'strict':>6}  " + " ".join(f"{c.name:>16}" for c in cols)
    print(head)
    print("-" * len(head))
    for what, obj, want in PROBES:
        cells = []
        for c in cols:
            wire = wire_of[c.name](obj)
            if what.startswith("trailing"):
                wire += wire_of[c.name](0)
            try:
                c.decode(wire)
                cells.append("ok")
            except c.errors:
                cells.append("-")
        flag = "ok" if want else "-"
        print(f"{what:<30} {flag:>6}  " + " ".join(f"{x:>16}" for x in cells))
    print(
        "  strict = what a strict receiver should do. The pydantic column is its default (lax)"
        " mode,\n  as TypeAdapter.validate_json runs unless strict=True is passed."
    )


# -- robustness ------------------------------------------------------------------------------


def mutate(encodings: list[bytes], rng: random.Random) -> list[bytes]:
    """FUZZ_N mutants, cycling through ``encodings``."""
    mutants = []
    for i in range(FUZZ_N):
        base = bytearray(encodings[i % len(encodings)])
        if i % 2 == 0:  # 1-4 bit flips
            for _ in range(rng.randint(1, 4)):
                pos = rng.randrange(len(base) * 8)
                base[pos // 8] ^= 1 << (pos % 8)
        else:  # truncation (possibly to nothing)
            del base[rng.randrange(len(base)) :]
        mutants.append(bytes(base))
    return mutants


def _name(exc: BaseException) -> str:
    return f"{type(exc).__module__.split('.')[0]}.{type(exc).__qualname__}"


def run_fuzz(decode: Callable[[bytes], Any], errors: tuple, inputs: list[bytes]) -> dict:
    """Feed every input; count accepted, documented errors and anything else, by type."""
    accepted = 0
    documented: Counter[str] = Counter()
    other: Counter[str] = Counter()
    example: dict[str, str] = {}
    times = []
    clock = time.perf_counter_ns
    for data in inputs:
        start = clock()
        try:
            decode(data)
            accepted += 1
        except errors as exc:
            documented[_name(exc)] += 1
        except Exception as exc:
            other[_name(exc)] += 1
            example.setdefault(_name(exc), f"{data[:24].hex()}...: {str(exc)[:70]}")
        times.append(clock() - start)
    return {
        "accepted": accepted,
        "documented": documented,
        "other": other,
        "example": example,
        "p99_us": sorted(times)[len(times) * 99 // 100] / 1000 if times else 0.0,
    }


def robustness(codecs: list[Codec], messages: dict[str, Message]) -> None:
    print(
        f"\n4. Robustness: {FUZZ_N:,} random byte strings (0-200 B) and {FUZZ_N:,} mutations"
        " (half 1-4 bit flips, half truncations) of each codec's own valid encodings"
        " of the four messages"
    )
    rng = random.Random(SEED + 2)
    randoms = [rng.randbytes(rng.randint(0, 200)) for _ in range(FUZZ_N)]
    head = (
        f"{'decoder':<27} {'input':<8} {'accepted':>8} {'p99 us':>7}  {'documented errors':<62}"
        " OTHER (would crash a node)"
    )
    print(head)
    print("-" * len(head))
    crashed: dict[str, Counter[str]] = {}

    def show(name: str, kind: str, res: dict, doc: str) -> None:
        oth = ", ".join(f"{k} {v}" for k, v in res["other"].most_common()) or "none"
        print(f"{name:<27} {kind:<8} {res['accepted']:>8} {res['p99_us']:>7.1f}  {doc:<62} {oth}")
        for k, ex in res["example"].items():
            print(f"{'':<27}   e.g. {k}: {ex}")
        crashed.setdefault(name, Counter()).update(res["other"])

    for c in codecs:
        if c.name == "cbor2 raw":
            continue  # the "+convert" rows run the same loads first
        encodings = [c.encode(c.to_native(m)) for m in messages.values()]
        mutants = mutate(encodings, random.Random(SEED + 3))  # same mutations for every codec
        for kind, inputs in (("random", randoms), ("mutated", mutants)):
            res = run_fuzz(c.decode, c.errors, inputs)
            doc = ", ".join(f"{k} {v}" for k, v in res["documented"].most_common())
            show(c.name, kind, res, doc)

    # the node's real entry point: Opener.open must never raise, whatever the bytes
    ident = Identity.from_seed(bytes(range(32)))
    sealed = [seal(ident, m, NOW, rng.randbytes(16)) for m in messages.values()]
    env_mutants = mutate(sealed, random.Random(SEED + 4))
    # mutated payloads, re-signed by a (hostile but valid) peer: they reach the payload decoder
    payloads = [msgspec.msgpack.encode(m) for m in messages.values()]
    sender, ts, enc = ident.peer_id.raw, int(NOW * 1000), msgspec.msgpack.Encoder()
    resigned = []
    for p in mutate(payloads, random.Random(SEED + 3)):
        mid = rng.randbytes(16)
        sig = ident.sign(signing_bytes(sender, ts, mid, p))
        resigned.append(enc.encode(Envelope(1, sender, ts, mid, p, sig)))
    for kind, inputs in (("random", randoms), ("mutated", env_mutants), ("resigned", resigned)):
        opener = Opener(max_skew=30.0, replay_capacity=FUZZ_N + 1)
        res = run_fuzz(lambda b, o=opener: o.open(b, NOW), (), inputs)
        res["accepted"] = opener.accepted
        reasons = ", ".join(f"{k} {v}" for k, v in opener.rejected.most_common())
        show("Opener.open (must not raise)", kind, res, reasons)
    print(
        "  documented: msgspec.DecodeError (ValidationError subclasses it); cbor2.CBORDecodeError"
        " (CBORDecodeEOF subclasses it)\n  + msgspec.ValidationError; pydantic.ValidationError."
        " Opener.open returns a Rejection (its counted reasons shown).\n  'resigned': each"
        " mutated payload sealed in a validly signed envelope, as any peer with a key can do."
    )
    bad = {name: c for name, c in crashed.items() if c}
    if not bad:
        print("  verdict: every decoder raised only its documented errors")
        return
    print("  verdict: UNDOCUMENTED EXCEPTIONS from " + ", ".join(bad))
    if any("builtins.UnicodeDecodeError" in c for c in bad.values()):
        print(
            "  msgspec raises UnicodeDecodeError (a ValueError, not a DecodeError) for invalid"
            " UTF-8 inside a str\n  (known, open: msgspec issue #714). Opener.open turns any"
            " exception of the payload decode into\n  a 'malformed_payload' rejection, so it"
            " must not appear in the Opener.open rows above."
        )


# -- main ------------------------------------------------------------------------------------


def main() -> None:
    started = time.perf_counter()
    messages = sample_messages()
    codecs = make_codecs()
    check_equivalence(codecs, messages)
    versions = ", ".join(
        f"{p} {version(p)}" for p in ("msgspec", "cbor2", "pydantic", "cryptography") if _has(p)
    )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"bench_codec: CPython {platform.python_version()}, {os.cpu_count()} CPUs,"
        f" load {load:.2f}; {versions}"
    )
    if pydantic is None:
        print("pydantic is not installed: its rows are skipped (pip install pydantic)")
    print_codec_table(codec_table(codecs, messages))
    envelope_path(messages)
    strictness(codecs)
    robustness(codecs, messages)
    print(f"\ntotal {time.perf_counter() - started:.1f} s")


def _has(package: str) -> bool:
    try:
        version(package)
    except Exception:
        return False
    return True


if __name__ == "__main__":
    main()
