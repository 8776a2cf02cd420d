"""The original's CLI forms work as they did for ``hypha-worker`` (issue 14, item 5): the real
command, its exact one-line errors and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hypha_sm.config.addresses import nng_address


def hypha(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hypha_sm.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("multiaddr", "url"),
    [
        ("/ip4/127.0.0.1/tcp/7200", "tcp://127.0.0.1:7200"),
        ("/ip6/::1/tcp/7200", "tcp://[::1]:7200"),
        ("/dns4/gw.example/tcp/7000/p2p/12D3KooWAbc", "tcp://gw.example:7000"),
        ("/dns/gw.example/tcp/7000/tls", "tls+tcp://gw.example:7000"),
        ("tcp://127.0.0.1:7200", "tcp://127.0.0.1:7200"),
    ],
)
def test_multiaddrs_become_nng_addresses(multiaddr: str, url: str) -> None:
    assert nng_address(multiaddr) == url


@pytest.mark.parametrize(
    "bad", ["/ip4/1.2.3.4/udp/1234/quic-v1", "/ip4/1.2.3.4/tcp/99999", "/ip4/1.2.3.4/tcp/1/ws"]
)
def test_multiaddrs_without_an_nng_equivalent_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="multiaddr"):
        nng_address(bad)


def test_init_takes_the_originals_flags(tmp_path: Path) -> None:
    """``init -o FILE -n NAME --gateway/--listen/--external MULTIADDR``: the node's name
    prefixes its key and cert files; multiaddrs are written as NNG addresses."""
    result = hypha(
        "init", "-o", "worker.toml", "-n", "node1", "--with-keys",
        "--gateway", "/ip4/127.0.0.1/tcp/7000", "--listen", "/ip4/0.0.0.0/tcp/7200",
        "--external", "/dns4/box.example/tcp/7200", "--work-dir", "work",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "wrote worker.toml"
    for name in ("node1-node-key.pem", "node1-cert.pem", "node1-key.pem", "node1-trust.pem"):
        assert (tmp_path / name).exists()
    text = (tmp_path / "worker.toml").read_text()
    assert 'gateway_addresses = ["tcp://127.0.0.1:7000"]' in text
    assert 'listen_addresses = ["tcp://0.0.0.0:7200"]' in text
    assert 'external_addresses = ["tcp://box.example:7200"]' in text
    checked = hypha("check-config", "worker.toml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout)["external_addresses"] == ["tcp://box.example:7200"]


def test_init_in_another_directory_writes_a_config_that_checks_from_anywhere(
    tmp_path: Path,
) -> None:
    """The key and certificates are named relative to the config file, as every path in it
    is read, so the config works from the parent and from its own directory alike."""
    result = hypha("init", "conf/worker.toml", "--with-keys", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert 'node_key = "worker-node-key.pem"' in (tmp_path / "conf" / "worker.toml").read_text()
    for cwd, config in ((tmp_path, "conf/worker.toml"), (tmp_path / "conf", "worker.toml")):
        checked = hypha("check-config", config, cwd=cwd)
        assert checked.returncode == 0, (cwd, checked.stderr)


def test_init_refuses_a_quic_multiaddr_in_one_line(tmp_path: Path) -> None:
    result = hypha("init", "-o", "w.toml", "--gateway", "/ip4/1.2.3.4/udp/1/quic-v1", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        "hypha-sm: error: --gateway: multiaddr '/ip4/1.2.3.4/udp/1/quic-v1': only "
        "/ip4|ip6|dns|dns4|dns6/<host>/tcp/<port> converts to an NNG address (QUIC and other "
        "transports are not supported)\n"
    )
    assert not (tmp_path / "w.toml").exists()


def test_run_and_probe_take_dash_c(tmp_path: Path) -> None:
    """``run -c FILE`` and ``probe -c FILE ADDRESS`` as the original's; a missing file is one
    line naming it."""
    run = hypha("run", "-c", "missing.toml", cwd=tmp_path)
    assert (run.returncode, run.stderr) == (
        2,
        "hypha-sm: error: config file missing.toml does not exist\n",
    )
    assert hypha("init", "-o", "w.toml", cwd=tmp_path).returncode == 0
    probe = hypha("probe", "-c", "w.toml", "tcp://127.0.0.1:1", "--timeout", "200", cwd=tmp_path)
    assert probe.returncode == 1
    assert probe.stdout == "tcp://127.0.0.1:1: no healthy answer: timeout\n"


def test_multiaddrs_and_the_inference_class_in_a_config_and_its_variables(tmp_path: Path) -> None:
    """A config written for hypha-worker: multiaddrs (also in HYPHA_* variables) and an
    executor of class ``inference``."""
    assert hypha("init", "-o", "w.toml", "--with-keys", cwd=tmp_path).returncode == 0
    text = (tmp_path / "w.toml").read_text()
    text = text.replace('["tcp://0.0.0.0:7200"]', '["/ip4/0.0.0.0/tcp/7200"]')
    text += '\n[[executors]]\nclass = "inference"\nname = "llm"\nruntime = "process"\ncmd = "/bin/true"\n'
    (tmp_path / "w.toml").write_text(text)
    env = {"HYPHA_GATEWAY_ADDRESSES": '["/ip4/10.0.0.1/tcp/7000/p2p/12D3KooWAbc"]'}
    checked = hypha("check-config", "w.toml", cwd=tmp_path, env=env)
    assert checked.returncode == 0, checked.stderr
    settings = json.loads(checked.stdout)
    assert settings["listen_addresses"] == ["tcp://0.0.0.0:7200"]
    assert settings["gateway_addresses"] == ["tcp://10.0.0.1:7000"]
    assert any(e["class"] == "inference" for e in settings["executors"])


def test_a_variable_that_is_not_json_is_one_line_naming_it(tmp_path: Path) -> None:
    """Was a pydantic-settings traceback (issue 14, item 2)."""
    assert hypha("init", "-o", "w.toml", cwd=tmp_path).returncode == 0
    env = {"HYPHA_GATEWAY_ADDRESSES": "tcp://gw:7000"}
    result = hypha("check-config", "w.toml", cwd=tmp_path, env=env)
    assert (result.returncode, result.stderr) == (
        2,
        "hypha-sm: error: HYPHA_GATEWAY_ADDRESSES: not JSON for gateway_addresses (a list or "
        "table), e.g. HYPHA_GATEWAY_ADDRESSES='[\"tcp://host:7000\"]'\n",
    )


@pytest.mark.parametrize(
    ("work_dir", "why"),
    [("/proc/hypha", "No such file or directory"), ("afile", "{path} is a file")],
)
def test_a_work_dir_that_cannot_be_made_is_one_line_naming_work_dir(
    tmp_path: Path, work_dir: str, why: str
) -> None:
    """Was ``[Errno 2] No such file or directory: '/proc/hypha'`` (issue 14, item 2)."""
    assert hypha("init", "-o", "w.toml", "--with-keys", cwd=tmp_path).returncode == 0
    (tmp_path / "afile").write_text("")
    result = hypha(
        "run", "-c", "w.toml", "--work-dir", work_dir,
        "--external", "/ip4/127.0.0.1/tcp/7200",  # (no warning about a wildcard listen)
        cwd=tmp_path,
    )  # fmt: skip
    shown = work_dir if work_dir.startswith("/") else str(tmp_path / work_dir)
    assert (result.returncode, result.stderr) == (
        2,
        f"hypha-sm: error: work_dir {shown}: cannot create or write it: "
        f"{why.format(path=shown)}\n",
    )


def test_relative_paths_in_a_config_file_are_relative_to_the_file(tmp_path: Path) -> None:
    """``hypha-sm check-config conf/w.toml`` from the parent finds ``node_key`` and the TLS
    files beside the file, and puts ``work_dir`` there (issue 14, item 3); a path given in a
    variable stays relative to where the command runs."""
    conf = tmp_path / "conf"
    conf.mkdir()
    assert hypha("init", "w.toml", "--with-keys", cwd=conf).returncode == 0
    text = (conf / "w.toml").read_text()
    text = "\n".join(
        'work_dir = "work"' if line.startswith("work_dir =") else line
        for line in text.splitlines()
    )
    (conf / "w.toml").write_text(text + "\n")
    result = hypha("check-config", "conf/w.toml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    settings = json.loads(result.stdout)
    assert settings["node_key"] == str(conf / "worker-node-key.pem")
    assert settings["cert_pem"] == str(conf / "worker-cert.pem")
    assert settings["work_dir"] == str(conf / "work")
    from_env = hypha("check-config", "conf/w.toml", cwd=tmp_path, env={"HYPHA_WORK_DIR": "jobs"})
    assert json.loads(from_env.stdout)["work_dir"] == "jobs"


def test_the_gateway_takes_multiaddrs_too(tmp_path: Path) -> None:
    from hypha_sm.config.gateway import GatewaySettings

    settings = GatewaySettings.model_validate(
        {"node_key": str(tmp_path / "k.pem"), "listen": "/ip4/0.0.0.0/tcp/7000"}
    )
    assert settings.listen == "tcp://0.0.0.0:7000"


def test_probe_takes_a_multiaddr_and_refuses_one_without_an_nng_form_in_one_line(
    tmp_path: Path,
) -> None:
    """``probe /ip4/.../tcp/PORT`` probes that address (here nobody answers: exit 1); a QUIC
    multiaddr is a one-line error, exit 2."""
    quiet = hypha("probe", "/ip4/127.0.0.1/tcp/1", "--timeout", "200", cwd=tmp_path)
    assert (quiet.returncode, quiet.stdout) == (
        1,
        "/ip4/127.0.0.1/tcp/1: no healthy answer: timeout\n",
    )
    quic = hypha("probe", "/ip4/1.2.3.4/udp/1234/quic-v1", cwd=tmp_path)
    assert (quic.returncode, quic.stdout) == (2, "")
    assert quic.stderr == (
        "hypha-sm: error: multiaddr '/ip4/1.2.3.4/udp/1234/quic-v1': only "
        "/ip4|ip6|dns|dns4|dns6/<host>/tcp/<port> converts to an NNG address "
        "(QUIC and other transports are not supported)\n"
    )


@pytest.mark.parametrize(
    ("env", "flags", "line"),
    [
        (
            {"HYPHA_RESOURCES__CPU": "-1"},
            [],
            "HYPHA_RESOURCES__CPU: resources.cpu = '-1': Input should be greater than or equal "
            "to 0",
        ),
        (
            {"OTEL_TRACES_SAMPLER_ARG": "7"},
            [],
            "OTEL_TRACES_SAMPLER_ARG: telemetry_sample_ratio = '7': Input should be less than "
            "or equal to 1",
        ),
        (
            {},
            ["--gateway", "nonsense"],
            "--gateway: gateway_addresses.0 = 'nonsense': String should match pattern "
            "'^(tcp|tls\\+tcp)://[^\\s]+:\\d+$|^ipc:///[^\\s]+$'",
        ),
        (
            {"HYPHA_LOG_LEVEL": "loud"},
            [],
            "HYPHA_LOG_LEVEL: log_level = 'loud': Input should be 'DEBUG', 'INFO', 'WARNING' "
            "or 'ERROR'",
        ),
        ({}, [], None),
    ],
)
def test_a_bad_value_is_blamed_on_where_it_was_set(
    tmp_path: Path, env: dict[str, str], flags: list[str], line: str | None
) -> None:
    """An invalid value names its source, the variable or flag that set it, not the file
    (which was blamed for all of them); a value from the file still names the file."""
    assert hypha("init", "w.toml", cwd=tmp_path).returncode == 0
    if line is None:  # the file's own value
        text = (tmp_path / "w.toml").read_text().replace("cpu = ", "cpu = -2 #", 1)
        (tmp_path / "w.toml").write_text(text)
        line = "w.toml: resources.cpu = -2: Input should be greater than or equal to 0"
    result = hypha("check-config", "w.toml", *flags, cwd=tmp_path, env=env)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"hypha-sm: error: invalid configuration:\n  {line}\n"


def test_the_log_level_and_format_flags_change_what_a_node_writes(tmp_path: Path) -> None:
    """``--log-format json``: every stderr line of a running worker is one JSON object;
    ``--log-level warning`` drops the info lines; a bad level is a one-line error, exit 2."""
    import signal
    import time

    assert hypha("init", "w.toml", "--with-keys", cwd=tmp_path).returncode == 0
    config = (tmp_path / "w.toml").read_text()
    config = config.replace('job_user = "auto"', 'job_user = "node"')
    (tmp_path / "w.toml").write_text(config.replace("7200", "0"))
    lines = {}
    for level in ("info", "warning"):
        node = subprocess.Popen(
            [sys.executable, "-m", "hypha_sm.cli", "run", "w.toml", "--log-format", "json",
             "--log-level", level],
            cwd=tmp_path, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(3)
        node.send_signal(signal.SIGINT)
        _, err = node.communicate(timeout=30)
        assert node.returncode == 0, err
        lines[level] = [json.loads(line) for line in err.splitlines()]
        assert all(set(e) >= {"ts", "level", "logger", "msg"} for e in lines[level])
    assert any(e["level"] == "INFO" for e in lines["info"])
    assert lines["warning"]
    assert all(e["level"] in ("WARNING", "ERROR") for e in lines["warning"])
    bad = hypha("run", "w.toml", "--log-format", "xml", cwd=tmp_path)
    assert (bad.returncode, bad.stderr) == (
        2,
        "hypha-sm: error: invalid configuration:\n  --log-format: log_format = 'xml': Input "
        "should be 'text' or 'json'\n",
    )


@pytest.mark.parametrize(
    ("env", "flags", "line"),
    [
        (
            {},
            ["--work-dir", "/proc/hypha"],
            "work_dir /proc/hypha: cannot create or write it: No such file or directory",
        ),
        ({"HYPHA_JOB_USER": "nosuchuser"}, [], "job_user = 'nosuchuser': no such user"),
    ],
)
def test_check_config_refuses_what_run_refuses(
    tmp_path: Path, env: dict[str, str], flags: list[str], line: str
) -> None:
    """A work dir that cannot be made (tried, not guessed: root may write anywhere by the
    permission bits, not in /proc) and a job user that does not exist fail ``check-config``
    exactly as they fail ``run``."""
    assert hypha("init", "w.toml", "--with-keys", cwd=tmp_path).returncode == 0
    for command in ("check-config", "run"):
        result = hypha(command, "w.toml", *flags, cwd=tmp_path, env=env)
        assert result.returncode == 2, (command, result.stderr)
        assert result.stderr.endswith(f"hypha-sm: error: {line}\n"), (command, result.stderr)
    assert not Path("/proc/hypha").exists()


def test_a_key_beside_the_command_not_the_config_is_named_not_replaced(tmp_path: Path) -> None:
    """Issue 14, item 3: run from the parent of a config whose key sits in the current
    directory, the error names the key that exists and how to point at it; it does not tell
    the user to make a new identity."""
    (tmp_path / "conf").mkdir()
    assert hypha("init", "conf/w.toml", cwd=tmp_path).returncode == 0
    assert hypha("keygen", "worker-node-key.pem", cwd=tmp_path).returncode == 0
    result = hypha("check-config", "conf/w.toml", cwd=tmp_path)
    key = tmp_path / "worker-node-key.pem"
    assert result.returncode == 2
    assert result.stderr == (
        f"hypha-sm: error: node_key {tmp_path / 'conf' / 'worker-node-key.pem'}: no such file; "
        f"{key} exists, but paths in a config file are relative to the file: set node_key = "
        f'"{key}"\n'
    )


@pytest.mark.parametrize("role", ["worker", "gateway", "scheduler"])
def test_a_port_in_use_is_one_line_from_the_real_command(tmp_path: Path, role: str) -> None:
    """Issue 14, item 2: a 52-line ExceptionGroup was printed by the worker and the gateway
    alike; each role's real command now says it in one line and exits 2."""
    import pynng

    assert hypha("init", "w.toml", "--with-keys", cwd=tmp_path).returncode == 0
    with pynng.Rep0(listen="tcp://127.0.0.1:0") as taken:
        address = taken.listeners[0].url
        if role == "worker":
            argv = ["run", "w.toml", "--listen", address]
        elif role == "gateway":
            argv = ["gateway", "run", "--node-key", "worker-node-key.pem", "--listen", address,
                    "--ingest", "tcp://127.0.0.1:0", "--publish", "tcp://127.0.0.1:0"]  # fmt: skip
        else:
            (tmp_path / "job.toml").write_text(
                'node_key = "worker-node-key.pem"\n'
                'gateway_addresses = ["tcp://127.0.0.1:1"]\n'
                f'listen_address = "{address}"\n'
                '[job]\nexecutor = { class = "train", name = "bigram-demo" }\n'
            )
            argv = ["scheduler", "run", "job.toml"]
        result = hypha(*argv, cwd=tmp_path, env={"HYPHA_JOB_USER": "node"})
    assert result.returncode == 2, result.stderr
    assert (
        result.stderr.splitlines()[-1]
        == f"hypha-sm: error: bad_address: {address}: Address in use"
    )
    assert "Traceback" not in result.stderr
    assert "ExceptionGroup" not in result.stderr


def test_replay_into_a_pipe_that_closes_early_is_quiet(tmp_path: Path) -> None:
    """``hypha-sm replay LOG | head``: no BrokenPipeError, the shell's exit 141. The reader
    here leaves before the first write (``true``); ``head -1`` could take the whole output
    from the pipe's buffer before leaving, and then nothing broke."""
    log = Path(__file__).resolve().parent.parent / "specs" / "logs" / "job-lifecycle.jsonl"
    result = subprocess.run(
        f"{sys.executable} -m hypha_sm.cli replay {log} --until 8 | true; "
        'echo "rc=${PIPESTATUS[0]}" >&2',
        shell=True, executable="/bin/bash", capture_output=True, text=True, timeout=60,
        cwd=tmp_path, check=False,
    )  # fmt: skip
    assert result.stderr == "rc=141\n", result.stderr
