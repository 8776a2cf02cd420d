"""worker.toml: every key of the seed, the layers, OTEL_* variables, init, and clear errors."""

from __future__ import annotations

import ssl
import stat
import sys
from pathlib import Path

import pytest

from hypha_sm.cli import main
from hypha_sm.config.layers import ConfigError
from hypha_sm.config.worker import load_worker_settings
from hypha_sm.init import InitError, write_example
from hypha_sm.net.keys import load_key_file
from hypha_sm.net.tls import TlsFiles


@pytest.fixture
def example(tmp_path: Path) -> Path:
    path = tmp_path / "worker.toml"
    write_example(path, work_dir=tmp_path / "work")
    return path


def test_check_config_reports_what_run_would_refuse(
    example: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One validation for both (issue 14, item 4): a missing node key, a TLS file a tls+tcp://
    address needs, a work dir that cannot be made, an executor program that is not there."""
    text = example.read_text()
    text = text.replace('cmd = "' + sys.executable + '"', 'cmd = "/no/such/python"', 1)
    text = text.replace(
        'listen_addresses = ["tcp://0.0.0.0:7200"]',
        'listen_addresses = ["tls+tcp://0.0.0.0:7200"]',
    )
    text = text.replace('# cert_pem = "worker-cert.pem"', 'cert_pem = "missing-cert.pem"')
    text = text.replace('# key_pem = "worker-key.pem"', 'key_pem = "missing-key.pem"')
    text = text.replace('# trust_pem = "worker-trust.pem"', 'trust_pem = "missing-trust.pem"')
    example.write_text(text)
    (example.parent / "afile").write_text("")
    assert main(["check-config", str(example), "--work-dir", str(example.parent / "afile")]) == 2
    err = capsys.readouterr().err.splitlines()
    base = example.parent
    assert err == [
        f"hypha-sm: error: node_key {base / 'worker-node-key.pem'}: no such file (if this node "
        f"has an identity, point node_key at it; `hypha-sm keygen {base / 'worker-node-key.pem'}`"
        " makes a new one)",
        f"hypha-sm: error: cert_pem {base / 'missing-cert.pem'}: no such file (a tls+tcp:// "
        "address needs it)",
        f"hypha-sm: error: key_pem {base / 'missing-key.pem'}: no such file (a tls+tcp:// "
        "address needs it)",
        f"hypha-sm: error: trust_pem {base / 'missing-trust.pem'}: no such file (a tls+tcp:// "
        "address needs it)",
        f"hypha-sm: error: work_dir {base / 'afile'}: cannot create or write it: "
        f"{base / 'afile'} is a file",
        "hypha-sm: error: executor train/diloco-transformer: cmd '/no/such/python' is not a "
        "program here",
    ]


def test_init_writes_a_config_that_loads_unchanged(example: Path, tmp_path: Path) -> None:
    """The example config is valid as written, with the seed's keys and defaults."""
    settings = load_worker_settings(example, {})
    assert settings.work_dir == tmp_path / "work"
    assert settings.offer.strategy == "whole"
    assert [(e.cls, e.name, e.runtime) for e in settings.executors] == [
        ("train", "diloco-transformer", "process"),
        ("train", "bigram-demo", "process"),
        ("aggregate", "parameter-server", "parameter-server"),
    ]
    assert "{SOCKET_PATH}" in settings.executors[0].args
    # Jobs run with the interpreter that has hypha_sm installed, not whatever `python` is.
    assert settings.executors[1].cmd == sys.executable
    assert settings.telemetry_endpoint is None


def test_init_refuses_to_overwrite_without_force(example: Path, tmp_path: Path) -> None:
    """An existing config is never silently replaced."""
    with pytest.raises(InitError, match="refusing to overwrite"):
        write_example(example, work_dir=tmp_path)
    assert main(["init", str(example)]) == 2
    assert main(["init", str(example), "--force"]) == 0


def test_init_with_keys_writes_a_private_node_key_and_working_dev_certificates(
    tmp_path: Path,
) -> None:
    """--with-keys: a mode-0600 node key and a CA-signed certificate usable for mutual TLS."""
    path = tmp_path / "node" / "worker.toml"
    assert main(["init", str(path), "--with-keys", "--work-dir", str(tmp_path / "w")]) == 0
    settings = load_worker_settings(path, {})
    assert settings.cert_pem
    assert settings.key_pem
    assert settings.trust_pem
    assert stat.S_IMODE(settings.key_pem.stat().st_mode) == 0o600
    assert load_key_file(settings.node_key).peer_id
    files = TlsFiles(settings.cert_pem, settings.key_pem, settings.trust_pem)
    assert isinstance(files.ssl_server_context(), ssl.SSLContext)
    assert isinstance(files.ssl_client_context(), ssl.SSLContext)


def test_layers_env_beats_file_and_flags_beat_both(
    example: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HYPHA_WORK_DIR overrides the file; --work-dir overrides both; tables merge."""
    monkeypatch.setenv("HYPHA_WORK_DIR", "/env/work")
    monkeypatch.setenv("HYPHA_RESOURCES__GPU", "24")
    monkeypatch.setenv("HYPHA_OFFER__STRATEGY", "flexible")
    settings = load_worker_settings(example, {})
    assert settings.work_dir == Path("/env/work")
    assert (settings.resources.gpu, settings.resources.cpu) == (24, 4)
    assert settings.offer.strategy == "flexible"
    assert load_worker_settings(example, {"work_dir": "/flag"}).work_dir == Path("/flag")


def test_a_gateway_flag_replaces_the_whole_list(example: Path) -> None:
    """Arrays are replaced, not appended."""
    settings = load_worker_settings(example, {"gateway_addresses": ["tcp://10.0.0.1:7000"]})
    assert settings.gateway_addresses == ["tcp://10.0.0.1:7000"]


def test_otel_variables_win_over_telemetry_keys(
    example: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OTEL_EXPORTER_OTLP_ENDPOINT and friends override the telemetry_* keys."""
    text = example.read_text().replace(
        '# telemetry_endpoint = "https://otlp.example/otlp"',
        'telemetry_endpoint = "https://from-file.example"',
    )
    example.write_text(text)
    assert load_worker_settings(example, {}).telemetry_endpoint == "https://from-file.example"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    settings = load_worker_settings(example, {})
    assert settings.telemetry_endpoint == "http://127.0.0.1:4318"
    assert settings.telemetry_sample_ratio == 0.25


BAD = [
    ("missing work_dir", ('work_dir = "', '# work_dir = "'), "work_dir: missing (required)"),
    ("bad strategy", ('strategy = "whole"', 'strategy = "greedy"'), "offer.strategy"),
    ("table strategy", ('strategy = "whole"', 'strategy = { type = "flexible" }'), None),
    ("negative cpu", ("cpu = 4", "cpu = -4"), "resources.cpu = -4"),
    ("nan price", ("price = 100.0", "price = nan"), "offer.price = nan"),
    (
        "unknown class",
        ('class = "train"', 'class = "evaluate"'),
        "executors.0.class = 'evaluate'",
    ),
    (
        "runtime mismatch",
        ('runtime = "process"', 'runtime = "parameter-server"'),
        "class 'train' runs on runtime 'process'",
    ),
    ("process without cmd", ("cmd = ", "# no cmd = "), "the process runtime needs `cmd`"),
    (
        "duplicate executor",
        ('name = "parameter-server"', 'name = "diloco-transformer"\nclass_ = 1'),
        "class_: unknown key",
    ),
    (
        "bad address",
        ('listen_addresses = ["tcp://0.0.0.0:7200"]', 'listen_addresses = ["0.0.0.0:7200"]'),
        "listen_addresses.0 = '0.0.0.0:7200'",
    ),
    (
        "no gateway",
        ('gateway_addresses = ["tcp://127.0.0.1:7000"]', "gateway_addresses = []"),
        "gateway_addresses = []",
    ),
    (
        "tls without certs",
        (
            'gateway_addresses = ["tcp://127.0.0.1:7000"]',
            'gateway_addresses = ["tls+tcp://127.0.0.1:7000"]',
        ),
        "tls+tcp:// addresses need cert_pem, key_pem, trust_pem",
    ),
    (
        "sample ratio",
        ("# telemetry_sample_ratio = 0.1", "telemetry_sample_ratio = 1.5"),
        "telemetry_sample_ratio = 1.5",
    ),
    (
        "bad protocol",
        ('# telemetry_protocol = "http/protobuf"', 'telemetry_protocol = "carrier-pigeon"'),
        "telemetry_protocol = 'carrier-pigeon'",
    ),
    ("unknown key", ("work_dir =", "wrok_dir = 1\nwork_dir ="), "wrok_dir: unknown key"),
]


@pytest.mark.parametrize(("case", "edit", "message"), BAD, ids=[b[0] for b in BAD])
def test_each_bad_config_fails_with_its_own_message(
    example: Path, case: str, edit: tuple[str, str], message: str | None
) -> None:
    """A validation error names the key, the value and what is allowed; the node does not start."""
    old, new = edit
    text = example.read_text()
    assert old in text, case
    example.write_text(text.replace(old, new, 1))
    if message is None:
        load_worker_settings(example, {})
        return
    with pytest.raises(ConfigError) as err:
        load_worker_settings(example, {})
    assert message in str(err.value)


def test_duplicate_executors_are_refused(example: Path) -> None:
    """Two executors with the same class and name would make dispatch ambiguous."""
    text = example.read_text().replace(
        'class = "aggregate"\nname = "parameter-server"\nruntime = "parameter-server"',
        'class = "train"\nname = "diloco-transformer"\nruntime = "process"\ncmd = "x"',
    )
    example.write_text(text)
    with pytest.raises(ConfigError, match="configured twice"):
        load_worker_settings(example, {})


def test_check_config_prints_the_effective_settings(
    example: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`hypha-sm check-config` validates and shows what the node would run with."""
    from hypha_sm.net.keys import create_key_file

    create_key_file(example.parent / "worker-node-key.pem")
    assert main(["check-config", str(example), "--gateway", "tcp://10.0.0.1:7000"]) == 0
    out = capsys.readouterr().out
    assert '"gateway_addresses": [\n    "tcp://10.0.0.1:7000"\n  ]' in out
    assert '"class": "train"' in out


def test_the_node_says_what_it_offers_and_warns_of_resources_it_lacks(example: Path) -> None:
    """Issue 14, item 1: a start-up summary; cpu 64 or a GPU on a 2-core box without one is
    a warning (the resources are offered all the same)."""
    from hypha_sm.config.worker import capacity_warnings, summary

    settings = load_worker_settings(example, {})
    line = summary(settings)
    assert line.startswith(f"offering cpu {settings.resources.cpu:g}, memory ")
    assert "at price 100 (whole, floor 100)" in line
    assert "executors train/diloco-transformer" in line
    assert line.endswith("(reached at the listen address); gateways tcp://127.0.0.1:7000")
    settings.resources.cpu = 64
    settings.resources.gpu = 24
    warnings = capacity_warnings(settings, cpus=2, memory_bytes=2 * 10**9, gpu_found=False)
    assert warnings[0] == "resources.cpu = 64, but this machine has 2 CPUs"
    assert warnings[-1] == "resources.gpu = 24 GB, but no GPU was found (nvidia-smi)"
    disk = capacity_warnings(
        settings, cpus=128, memory_bytes=10**15, gpu_found=True, disk_bytes=3 * 10**9
    )
    assert disk == [
        f"resources.storage = {settings.resources.storage:g} GB, but the work dir's disk has "
        "3.0 GB free"
    ]
    assert capacity_warnings(settings, cpus=128, memory_bytes=10**15, gpu_found=True) == []
