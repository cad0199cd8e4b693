"""Configuration: both seed shapes load; every kind of bad config gives its message and exit code."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from qualys_collector.cli import main
from qualys_collector.config import load_config
from qualys_collector.errors import ConfigError
from qualys_collector.services.host_list import HostListOptions
from qualys_collector.services.host_list_detection import HostListDetectionOptions
from qualys_collector.sinks.file import FileOutput

# The seed's on-premises config.yaml (001_*.txt), placeholders filled, its `vm_scans::` typo kept.
SEED_YAML = """\
globals:
  debug: false
  id: not_used
  name: example_collector
  persistence:
    type: filesystem
    config:
      directory_name: state
outputs:
  devo_1:
    type: devo_platform
    config:
      address: collector-eu.devo.io
      port: 443
      type: SSL
      chain: chain.crt
      cert: domain.crt
      key: domain.key
inputs:
  qualys:
    id: 12345
    enabled: true
    environment: prod
    credentials:
      hostname: qualysapi.qualys.eu
      username: apiuser
      password: S3cr3t-Pa55
    services:
      vm_scans::
        request_period_in_seconds: 120
        override_tag: my.app.qualys.scans
        start_time_utc: "2024-01-07T05:00:00Z"
      user_activity::
        request_period_in_seconds: 60
        start_time_utc: "2024-01-07T05:00:00Z"
      host_list::
        request_period_in_seconds: 300
        start_time_utc: "2024-01-07T05:00:00Z"
        filters:
          details: All
          show_asset_id: "1"
          show_cloud_tags: "0"
      host_list_detection::
        request_period_in_seconds: 300
        start_time_utc: "2024-01-07T05:00:00Z"
        filters:
          details: All
          show_tags: "1"
          show_reopened_info: "0"
          status:
            - New
            - Fixed
"""

# The seed's collector-server JSON (001_*.txt), placeholders filled (with straight quotes).
SEED_JSON = {
    "global_overrides": {"debug": False},
    "inputs": {
        "qualys": {
            "id": "54321",
            "enabled": True,
            "environment": "dev",
            "credentials": {"hostname": "qualysapi.qualys.com", "username": "u", "password": "p4ssw0rd-json"},
            "services": {
                "vm_scans": {"request_period_in_seconds": 60, "override_tag": "my.app.vm", "start_time_utc": None},
                "user_activity": {"request_period_in_seconds": 60},
                "host_list": {"request_period_in_seconds": 60, "filters": {"details": "All/AGs"}},
                "host_list_detection": {"request_period_in_seconds": 60, "filters": {"status": ["Active"]}},
            },
        }
    },
}

FIM_YAML = """\
inputs:
  qualys_fim:
    id: 123123
    credentials:
      username: fimuser
      password: fim-pass-word
      base_url: https://gateway.qg1.apps.qualys.eu
      auth_url: https://gateway.qg1.apps.qualys.eu/auth
    services:
      fim_events:
        start_time_in_utc: "2024-01-06T10:00:00Z"
      fim_incidents:
        request_period_in_seconds: 600
"""


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_seed_yaml_loads_with_typo_warnings(tmp_path: Path) -> None:
    warnings: list[str] = []
    config = load_config(write(tmp_path, SEED_YAML), warn=warnings.append)
    vm = config.inputs.qualys
    assert vm is not None
    assert vm.id == "12345"
    assert vm.environment == "prod"
    assert vm.credentials.api_url == "https://qualysapi.qualys.eu"
    assert set(vm.services) == {"vm_scans", "user_activity", "host_list", "host_list_detection"}
    assert vm.services["vm_scans"].request_period_in_seconds == 120
    assert vm.services["vm_scans"].override_tag == "my.app.qualys.scans"
    assert vm.services["vm_scans"].start_time_utc == datetime(2024, 1, 7, 5, tzinfo=UTC)
    host_list = vm.services["host_list"]
    assert isinstance(host_list, HostListOptions)
    assert (host_list.filters.details, host_list.filters.show_asset_id, host_list.filters.show_cloud_tags) == (
        "All",
        1,
        0,
    )
    hld = vm.services["host_list_detection"]
    assert isinstance(hld, HostListDetectionOptions)
    assert hld.filters.status == ["New", "Fixed"]
    assert hld.filters.show_tags == 1
    assert sum("trailing ':'" in w for w in warnings) == 4
    assert any("filters.details has no effect" in w for w in warnings)
    assert config.outputs["devo_1"].type == "devo_platform"


def test_seed_json_loads_and_merges_global_overrides(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, json.dumps(SEED_JSON), "config.json"))
    assert config.globals.debug is False
    vm = config.inputs.qualys
    assert vm is not None
    assert vm.services["vm_scans"].start_time_utc is None
    assert vm.services["user_activity"].request_period_in_seconds == 60
    assert config.outputs == {}


def test_fim_config_accepts_the_fim_seed_spelling_of_start_time(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FIM_YAML))
    fim = config.inputs.qualys_fim
    assert fim is not None
    assert fim.services["fim_events"].start_time_utc == datetime(2024, 1, 6, 10, tzinfo=UTC)
    assert fim.credentials.token_url == "https://gateway.qg1.apps.qualys.eu/auth"


def test_unknown_global_is_ignored_with_the_seed_warning(tmp_path: Path) -> None:
    warnings: list[str] = []
    load_config(write(tmp_path, "globals:\n  multiprocessing: false\n" + FIM_YAML), warn=warnings.append)
    assert warnings == ["[WARNING] Illegal global setting has been ignored -> multiprocessing: False"]


def test_password_from_environment_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUALYS_PASSWORD", "from-env-secret")
    text = SEED_YAML.replace("password: S3cr3t-Pa55", "password: ${QUALYS_PASSWORD}")
    config = load_config(write(tmp_path, text))
    assert config.inputs.qualys is not None
    assert config.inputs.qualys.credentials.password.get_secret_value() == "from-env-secret"
    (tmp_path / "pw.txt").write_text("from-file-secret\n")
    text = SEED_YAML.replace("password: S3cr3t-Pa55", "password_file: pw.txt")
    config = load_config(write(tmp_path, text))
    assert config.inputs.qualys is not None
    assert config.inputs.qualys.credentials.password.get_secret_value() == "from-file-secret"


def test_plain_http_is_accepted_for_loopback_only(tmp_path: Path) -> None:
    text = SEED_YAML.replace("hostname: qualysapi.qualys.eu", "base_url: http://127.0.0.1:8080/")
    config = load_config(write(tmp_path, text))
    assert config.inputs.qualys is not None
    assert config.inputs.qualys.credentials.api_url == "http://127.0.0.1:8080"


def test_file_output_and_defaults(tmp_path: Path) -> None:
    text = FIM_YAML + "outputs:\n  local:\n    type: file\n    config:\n      path: out.jsonl\n"
    config = load_config(write(tmp_path, text))
    assert isinstance(config.outputs["local"], FileOutput)
    assert config.outputs["local"].config.path == "out.jsonl"


BAD = [
    # (replace this, with this, expected text in the message, seed error code)
    (
        'start_time_utc: "2024-01-07T05:00:00Z"\n      user',
        'start_time_utc: "2024-01-07 05:00"\n      user',
        "inputs.qualys.services.vm_scans.start_time_utc: start_time_utc value: 2024-01-07 05:00 does not comply "
        "with required format: %Y-%m-%dT%H:%M:%SZ",
        2,
    ),
    (
        'start_time_utc: "2024-01-07T05:00:00Z"\n      user',
        'start_time_utc: "2999-01-07T05:00:00Z"\n      user',
        "Invalid start_time_in_utc: 2999-01-07T05:00:00Z. Must be in the past",
        3,
    ),
    ("      user_activity::", "      user_activty:", "inputs.qualys.services.user_activty: unknown service", 10),
    (
        'show_asset_id: "1"',
        'show_asset_idd: "1"',
        "inputs.qualys.services.host_list.filters.show_asset_idd: unknown key",
        10,
    ),
    ('show_asset_id: "1"', 'show_asset_id: "yes"', "inputs.qualys.services.host_list.filters.show_asset_id", 10),
    ("- Fixed", "- Closed", "inputs.qualys.services.host_list_detection.filters.status.1", 10),
    (
        "hostname: qualysapi.qualys.eu",
        "hostname: https://qualysapi.qualys.eu",
        "inputs.qualys.credentials.hostname: hostname must be a bare host name",
        10,
    ),
    (
        "hostname: qualysapi.qualys.eu",
        "base_url: http://qualysapi.qualys.eu",
        "inputs.qualys.credentials.base_url: base_url uses plain http towards qualysapi.qualys.eu",
        10,
    ),
    (
        "override_tag: my.app.qualys.scans",
        "override_tag: My Tag!",
        "override_tag: 'My Tag!' is not a valid Devo tag",
        10,
    ),
    (
        "request_period_in_seconds: 120",
        "request_period_in_seconds: 0",
        "inputs.qualys.services.vm_scans.request_period_in_seconds: Input should be greater than or equal to 1",
        10,
    ),
    ("      username: apiuser\n", "", "inputs.qualys.credentials.username: is required", 10),
    (
        "password: S3cr3t-Pa55",
        "password: ${NOT_SET_ANYWHERE}",
        "environment variable NOT_SET_ANYWHERE is not set",
        10,
    ),
    (  # an empty password passed and came back from Qualys as a failed login (review)
        "password: S3cr3t-Pa55",
        'password: ""',
        "inputs.qualys.credentials.password: the password is empty: set it, or password_file",
        10,
    ),
    (  # accepted, and the credentials in it ignored (review); never echoed back
        "hostname: qualysapi.qualys.eu",
        "base_url: https://apiuser:Url-Pw-Canary@qualysapi.qualys.eu",
        "inputs.qualys.credentials.base_url: base_url must not carry a user name or password",
        10,
    ),
    ("    id: 12345", "    id: 'a b'", "inputs.qualys.id: id must be 1-32 letters", 10),
    ("      port: 443", "      port: 99999", "outputs.devo_1.config.port", 10),
    ("    type: devo_platform", "    type: devo_platform\n    batch_size: 0", "outputs.devo_1.batch_size", 10),
    (
        "      host_list_detection::\n",
        "      host_list_detection::\n        emit: changed\n",
        "host_list_detection.emit",
        10,
    ),
    (
        "      host_list_detection::\n",
        "      host_list_detection::\n        snapshot_every_days: 3\n",
        "snapshot_every_days applies only with emit: changes; remove it or set emit: changes",
        10,
    ),
]


@pytest.mark.parametrize(("old", "new", "expected", "code"), BAD)
def test_bad_config_names_the_key_and_fix(tmp_path: Path, old: str, new: str, expected: str, code: int) -> None:
    assert old in SEED_YAML
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, SEED_YAML.replace(old, new, 1)))
    assert expected in str(info.value)
    assert info.value.code == code
    assert "S3cr3t-Pa55" not in str(info.value)
    assert "Url-Pw-Canary" not in str(info.value)


def test_a_bad_password_value_is_never_echoed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, SEED_YAML.replace("password: S3cr3t-Pa55", "password: [S3cr3t-Pa55]")))
    assert "inputs.qualys.credentials.password" in str(info.value)
    assert "S3cr3t-Pa55" not in str(info.value)


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("config.yaml", "inputs: [unclosed", "is not valid YAML at line 1"),
        ("config.json", '{"inputs": }', "is not valid JSON at line 1"),
        ("config.toml", "x = 1", "unknown configuration type '.toml'"),
        ("config.yaml", "outputs: {}", "inputs: is missing or empty"),
        ("config.yaml", "inputs:\n  nessus: {}", "inputs.nessus: unknown input"),
    ],
)
def test_unreadable_configs(tmp_path: Path, name: str, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text, name))
    assert expected in str(info.value)


def test_validate_command_exit_codes(tmp_path: Path) -> None:
    runner = CliRunner()
    good = runner.invoke(main, ["validate", "-c", str(write(tmp_path, SEED_YAML))])
    assert good.exit_code == 0, good.output
    assert "is valid" in good.output
    assert "vm_scans, user_activity, host_list, host_list_detection" in good.output
    bad = runner.invoke(
        main, ["validate", "-c", str(write(tmp_path, SEED_YAML.replace("id: 12345", "id: ''"), "b.yaml"))]
    )
    assert bad.exit_code == 2
    missing = runner.invoke(main, ["validate", "-c", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2


def test_an_empty_fim_password_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"inputs\.qualys_fim\.credentials\.password: the password is empty"):
        load_config(write(tmp_path, FIM_YAML.replace("password: fim-pass-word", 'password: ""')))
