"""load_config: every problem at once, each at the right line and column."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from agent.config import ConfigError, ConfigIssue, load_config, main_check
from tests.agent.config.helpers import VALID, lines, write


def test_valid_file_loads(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, VALID), environ={})
    assert config.gateway.id == "gw-01"
    assert config.sensors[0].modbus.port == 502
    assert config.store.max_bytes == 2 * 2**30


def test_wrong_key_wrong_type_and_missing_field_reported_together(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        gateway: {id: gw-01}
        assets:
          - id: press-7
            machine: {standard: iso10816-3, group: 2, foundation: rigid, rpm: 1480}
        sensors:
          - id: m1-de
            modbus:
              host: 10.0.0.21
              prot: 502
              device_id: one
        store: {path: /tmp/outbox.db}
        """,
    )
    with pytest.raises(ConfigError) as exc:
        load_config(path, environ={})
    f = str(path)
    assert exc.value.issues == [
        ConfigIssue(
            f, 6, 5, "sensors[0].asset",
            "missing required key 'asset'; add asset: the id of an entry under assets",
        ),
        ConfigIssue(
            f, 9, 7, "sensors[0].modbus.prot",
            "unknown key 'prot'; allowed keys: host, port, bus, device_id, profile, timeout_s, "
            "backoff_max_s (did you mean 'port'?)",
        ),
        ConfigIssue(
            f, 10, 18, "sensors[0].modbus.device_id",
            "got 'one'; expected a whole number from 0 to 247",
        ),
    ]  # fmt: skip
    assert str(exc.value).splitlines()[2] == (
        f"{f}:10:18: sensors[0].modbus.device_id: got 'one'; expected a whole number from 0 to 247"
    )


def test_a_misspelt_required_key_is_one_issue(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("{host: 10.0.0.21}", "{hots: 10.0.0.21}"))
    assert lines(path) == [
        "config.yaml:8:14: sensors[0].modbus.hots: unknown key 'hots'; allowed keys: host, "
        "port, bus, device_id, profile, timeout_s, backoff_max_s (did you mean 'host'?)"
    ]


def test_discriminated_union_errors_point_into_the_machine(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        gateway: {id: gw-01}
        assets:
          - id: a1
            machine: {standard: iso10816-3, group: 3, foundation: no, rpm: 0}
          - id: a2
            machine: {standard: iso-10816-3}
          - id: a3
            machine: {rpm: 3}
          - id: a4
            machine: {standard: limits, limits: {ab: 3, bc: 2, cd: 5}, rpm: 9}
        sensors:
          - {id: s1, asset: a1, modbus: {host: h}}
        store: {path: /tmp/o.db}
        """,
    )
    assert lines(path) == [
        "config.yaml:4:44: assets[0].machine.group: got 3; expected one of 1, 2",
        "config.yaml:4:59: assets[0].machine.foundation: got no (YAML reads it as false; "
        "quote it: 'no'); expected one of rigid, flexible",
        "config.yaml:4:68: assets[0].machine.rpm: got 0; expected a number (shaft speed in rpm) "
        "greater than 0 "
        "and at most 100000",
        "config.yaml:6:25: assets[1].machine.standard: got 'iso-10816-3'; expected one of "
        "iso10816-3, iso10816-1, limits (did you mean 'iso10816-3'?)",
        "config.yaml:8:14: assets[2].machine.standard: missing required key 'standard'; "
        "add standard: one of iso10816-3, iso10816-1, limits",
        "config.yaml:10:41: assets[3].machine.limits: zone limits must rise: ab < bc < cd "
        "(got ab=3, bc=2, cd=5)",
    ]


def test_model_rule_points_at_the_key_it_names(tmp_path: Path) -> None:
    text = VALID.replace("{host: 10.0.0.21}", "{host: 10.0.0.21, timeout_s: 2}")
    path = write(tmp_path, text)
    assert lines(path) == [
        "config.yaml:8:42: sensors[0].modbus.timeout_s: modbus.timeout_s (2.0) must be "
        "shorter than poll_interval_s (1.0); lower modbus.timeout_s or raise poll_interval_s"
    ]


def test_empty_list_and_empty_value(tmp_path: Path) -> None:
    text = VALID.replace("store: {path: /tmp/outbox.db}", "store:\n  path:\n")
    path = write(tmp_path, text.replace("sensors:\n", "sensors: []\nx-old:\n"))
    assert lines(path) == [
        "config.yaml:5:10: sensors: the list is empty; add at least one entry",
        "config.yaml:11:3: store.path: got an empty value; expected a file path",
    ]


def test_number_where_text_is_expected_says_to_quote(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("{id: gw-01}", "{id: 0042}"))
    assert lines(path) == [
        "config.yaml:1:15: gateway.id: got 0042; expected an id: 1 to 64 letters, digits, "
        "'_', '.' or '-', starting with a letter or digit; YAML reads 0042 as a number: "
        'write it in quotes, "0042"'
    ]


def test_duplicate_keys_are_reported_at_the_second_key(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("{host: 10.0.0.21}", "\n      host: a\n      host: b"))
    assert lines(path) == [
        "config.yaml:10:7: sensors[0].modbus.host: duplicate key 'host' (also on line 9); "
        "YAML would silently keep only the last one: remove or rename one of them"
    ]


def test_merge_keys_and_x_anchors_are_allowed(tmp_path: Path) -> None:
    text = "x-modbus: &mb {port: 5020, timeout_s: 0.2}\n" + VALID.replace(
        "{host: 10.0.0.21}", "{<<: *mb, host: 10.0.0.21, port: 5021}"
    )
    config = load_config(write(tmp_path, text), environ={})
    assert config.sensors[0].modbus.port == 5021
    assert config.sensors[0].modbus.timeout_s == 0.2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "gateway:\n  id: gw\n\tsite: x\n",
            "config.yaml:3:1: YAML syntax error: found character '\\t' that cannot start any "
            "token; indent with spaces, not tabs",
        ),
        (
            "gateway:\n  id: gw\n   site: x\n",
            "config.yaml:3:8: YAML syntax error: mapping values are not allowed here; "
            "check the indentation, and quote values that contain ': '",
        ),
        (
            "# nothing yet\n",
            "config.yaml: the file is empty; expected a mapping with gateway, assets, "
            "sensors and store",
        ),
        (
            "- gateway\n",
            "config.yaml:1:1: the top level is a list; expected a mapping with keys gateway, "
            "assets, sensors, uplinks, store, health (each 'key:' at the start of a line)",
        ),
        (
            "gateway: !!python/object:os.system {id: x}\n",
            "config.yaml:1:10: gateway: unsupported YAML tag "
            "'tag:yaml.org,2002:python/object:os.system'; remove the tag",
        ),
    ],
    ids=["tab", "indent", "empty", "list", "unsafe-tag"],
)
def test_file_level_problems(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in lines(write(tmp_path, text))


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(b"gateway:\n  id: gw\xff\n")
    assert lines(path) == ["config.yaml:2:9: byte 0xff is not UTF-8 text; save the file as UTF-8"]


def test_missing_file_is_one_clear_line(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert main_check(tmp_path / "nope.yaml", out, err) == 2
    assert err.getvalue() == (
        f"{tmp_path / 'nope.yaml'}: cannot read the configuration: no such file; "
        "check the path given with -c\n"
    )
    assert out.getvalue() == ""


def test_main_check_prints_summary_or_issues(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert main_check(write(tmp_path, VALID), out, err) == 0
    assert out.getvalue().startswith("gateway gw-01\n1 asset:\n") and err.getvalue() == ""
    bad = write(tmp_path, VALID.replace("gateway: {id: gw-01}", "gateway: {id: gw-01, x: 1}"))
    out, err = io.StringIO(), io.StringIO()
    assert main_check(bad, out, err) == 2
    assert err.getvalue().count("\n") == 1 and "unknown key 'x'" in err.getvalue()


def test_recursive_alias_is_an_error_not_a_hang(tmp_path: Path) -> None:
    found = lines(write(tmp_path, VALID + "x-loop: &a [*a]\n"))
    assert found == [
        "config.yaml:10:9: x-loop[0]: an alias refers to its own parent; "
        "YAML cannot nest a value in itself"
    ]


def test_alias_bomb_is_bounded(tmp_path: Path) -> None:
    rows = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    rows += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 7)]
    found = lines(write(tmp_path, "\n".join(rows) + "\n"))
    assert found == [
        "config.yaml: the file expands to more than 100000 values (aliases?); simplify it"
    ]


def test_deep_nesting_is_an_issue_not_a_crash(tmp_path: Path) -> None:
    path = write(tmp_path, "a: " + "[" * 3000 + "]" * 3000 + "\n")
    assert lines(path) == [
        "config.yaml: values are nested too deeply; a configuration needs only a few levels"
    ]
