"""Layered settings: file, then HYPHA_* environment, then flags; errors name key and value."""

from __future__ import annotations

import re
import types
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from hypha_sm.config.layers import ConfigError, LayeredSettings, check_tls_files, load_settings
from hypha_sm.config.scheduler import SchedulerSettings


class Inner(BaseModel):
    cpu: int = Field(default=1, ge=0)
    gpu: int = 0


class Example(LayeredSettings):
    work_dir: Path
    addresses: list[str] = []
    resources: Inner = Inner()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_env_overrides_file_and_flags_override_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TOML → HYPHA_* → flags: later layers win."""
    path = write(tmp_path, 'work_dir = "/from/file"\n')
    assert load_settings(Example, path, {}).work_dir == Path("/from/file")
    monkeypatch.setenv("HYPHA_WORK_DIR", "/from/env")
    assert load_settings(Example, path, {}).work_dir == Path("/from/env")
    assert load_settings(Example, path, {"work_dir": "/from/flag"}).work_dir == Path("/from/flag")


def test_nested_tables_merge_and_arrays_replace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An env value for one nested key keeps the file's other keys; an array is replaced whole."""
    path = write(
        tmp_path,
        'work_dir = "/w"\naddresses = ["a", "b"]\n[resources]\ncpu = 8\ngpu = 24\n',
    )
    monkeypatch.setenv("HYPHA_RESOURCES__GPU", "16")
    monkeypatch.setenv("HYPHA_ADDRESSES", '["c"]')
    settings = load_settings(Example, path, {})
    assert settings.resources == Inner(cpu=8, gpu=16)
    assert settings.addresses == ["c"]
    assert load_settings(Example, path, {"addresses": ["d", "e"]}).addresses == ["d", "e"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "work_dir: missing (required)"),
        ('work_dir = "/w"\nwrok_dir = "/x"\n', "wrok_dir: unknown key"),
        (
            'work_dir = "/w"\n[resources]\ncpu = -1\n',
            "resources.cpu = -1: Input should be greater than or equal to 0",
        ),
        ('work_dir = "/w"\n[resources]\ncpu = "many"\n', "resources.cpu = 'many'"),
        ("work_dir = ", "not valid TOML"),
    ],
)
def test_invalid_config_names_key_value_and_rule(tmp_path: Path, text: str, message: str) -> None:
    """Each problem is one line: the key, the value given, and what is allowed."""
    with pytest.raises(ConfigError) as err:
        load_settings(Example, write(tmp_path, text), {})
    assert message in str(err.value)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    """The path of a missing config file is in the error."""
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(Example, tmp_path / "nope.toml", {})


@pytest.mark.parametrize(
    ("addresses", "given", "problem"),
    [
        (["tcp://a:1"], {}, None),
        (["tls+tcp://a:1"], {"cert_pem": "c", "key_pem": "k", "trust_pem": "t"}, None),
        (
            ["tcp://a:1", "tls+tcp://a:2"],
            {},
            "tls+tcp:// addresses need cert_pem, key_pem, trust_pem",
        ),
        (
            ["tls+tcp://a:1"],
            {"cert_pem": "c", "key_pem": "k"},
            "tls+tcp:// addresses need trust_pem",
        ),
        ([], {}, None),
    ],
)
def test_tls_addresses_need_all_three_files(
    addresses: list[str], given: dict[str, str], problem: str | None
) -> None:
    """The one check every role's settings use (worker, gateway, scheduler)."""
    settings = types.SimpleNamespace(
        **{"cert_pem": None, "key_pem": None, "trust_pem": None, **given}
    )
    if problem is None:
        check_tls_files(settings, addresses)
    else:
        with pytest.raises(ValueError, match=re.escape(problem)):
            check_tls_files(settings, addresses)


def test_a_scheduler_with_a_tls_gateway_and_no_files_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "job.toml"
    config.write_text(
        'node_key = "k"\ngateway_addresses = ["tls+tcp://127.0.0.1:7000"]\n'
        '[job]\nworkers = 1\nexecutor = { class = "train", name = "demo" }\n'
    )
    with pytest.raises(
        ConfigError, match="tls\\+tcp:// addresses need cert_pem, key_pem, trust_pem"
    ):
        load_settings(SchedulerSettings, config, {})
