"""Source event obfuscation: hash, mask, drop, through nested dicts and lists."""

from __future__ import annotations

import pytest

from qualys_collector.config import build_config
from qualys_collector.engine.obfuscate import MASK, compile_rules
from qualys_collector.errors import ConfigError

EVENT = {
    "HOST": {"ID": "1", "IP": "10.0.0.1", "DNS": "a.example", "TAGS": [{"NAME": "prod"}, {"NAME": "dmz"}]},
    "DETECTION": {"RESULTS": "secret output", "QID": "42"},
}


def test_hash_is_salted_stable_and_joinable() -> None:
    one = compile_rules([("HOST.IP", "hash")], "salt-a")
    two = compile_rules([("HOST.IP", "hash")], "salt-b")
    assert one is not None
    assert two is not None
    first = one(EVENT)["HOST"]["IP"]
    assert first.startswith("sha256:")
    assert first == one({"HOST": {"IP": "10.0.0.1"}})["HOST"]["IP"]  # equal values stay joinable
    assert first != two(EVENT)["HOST"]["IP"]  # and depend on the salt
    assert "10.0.0.1" not in str(one(EVENT))


def test_mask_drop_lists_and_missing_paths() -> None:
    transform = compile_rules(
        [("HOST.DNS", "mask"), ("DETECTION.RESULTS", "drop"), ("HOST.TAGS.NAME", "mask"), ("NOPE.X", "drop")], None
    )
    assert transform is not None
    out = transform(EVENT)
    assert out["HOST"]["DNS"] == MASK
    assert "RESULTS" not in out["DETECTION"]
    assert out["HOST"]["TAGS"] == [{"NAME": MASK}, {"NAME": MASK}]
    assert EVENT["DETECTION"]["RESULTS"] == "secret output"  # the input is not modified
    assert compile_rules([], None) is None


def test_hashing_requires_a_salt_and_the_salt_is_never_echoed() -> None:
    raw = {
        "inputs": {
            "qualys": {
                "id": 1,
                "credentials": {"hostname": "h.example", "username": "u", "password": "p"},
                "services": {"host_list": {"obfuscation": [{"field": "IP", "action": "hash"}]}},
            }
        }
    }
    with pytest.raises(ConfigError, match="set obfuscation_salt"):
        build_config(raw, warnings=[])
    raw["inputs"]["qualys"]["obfuscation_salt"] = ["S4lty-S4lt"]  # type: ignore[index]
    with pytest.raises(ConfigError) as info:
        build_config(raw, warnings=[])
    assert "S4lty-S4lt" not in str(info.value)
    bad = {
        "inputs": {
            "qualys": {
                "id": 1,
                "credentials": {"hostname": "h.example", "username": "u", "password": "p"},
                "services": {"host_list": {"obfuscation": [{"field": "IP", "action": "encrypt"}]}},
            }
        }
    }
    with pytest.raises(ConfigError, match=r"obfuscation\.0\.action"):
        build_config(bad, warnings=[])
