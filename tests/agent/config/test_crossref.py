"""Checks between entries: ids, references, shared devices, profiles, metrics, token files."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from agent.config import load_config, main_check
from tests.agent.config.helpers import lines, write

TWO = """\
gateway: {id: gw-01}
assets:
  - id: press-7
    machine: {standard: iso10816-3, group: 2, foundation: rigid, rpm: 1480}
    failure: {metric: velocity_rms}
  - id: press-7
    machine: {standard: iso10816-1, class: II, rpm: 900}
sensors:
  - id: m1
    asset: press-7
    modbus: {host: 10.0.0.21, device_id: 1}
  - id: m1
    asset: pres-7
    modbus: {host: 10.0.0.21, port: 502, device_id: 1, profile: qm30vt2}
    channels: [z, y]
store: {path: /tmp/o.db}
"""


def test_cross_reference_errors_all_at_once(tmp_path: Path) -> None:
    assert lines(write(tmp_path, TWO)) == [
        "config.yaml:5:23: assets[0].failure.metric: unknown metric 'velocity_rms'; expected "
        "one of accel_peak_g, accel_rms_g, crest_factor, envelope_bpfi_g, envelope_bpfo_g, "
        "envelope_bsf_g, envelope_ftf_g, hf_accel_rms_g, kurtosis, peak_frequency_hz, "
        "temperature_c, velocity_peak_mm_s, velocity_rms_mm_s (did you mean 'velocity_rms_mm_s'?)",
        "config.yaml:6:9: assets[1].id: duplicate asset id 'press-7' (first used on line 3); "
        "each asset needs its own id",
        "config.yaml:12:9: sensors[1].id: duplicate sensor id 'm1' (first used on line 9); "
        "each sensor needs its own id",
        "config.yaml:13:12: sensors[1].asset: no asset has id 'pres-7'; known asset ids: "
        "press-7 (did you mean 'press-7'?)",
        "config.yaml:14:53: sensors[1].modbus.device_id: sensor polls the same Modbus device "
        "as sensor 'm1' (line 11): 10.0.0.21:502 device_id 1; give each sensor its own "
        "device_id, host or port",
        "config.yaml:14:65: sensors[1].modbus.profile: unknown register profile 'qm30vt2'; "
        "known profiles: amc-avm2000r, banner-qm30vt2, machinesaver-trivibe "
        "(did you mean 'banner-qm30vt2'?)",
    ]


GOOD = """\
gateway: {id: gw-01}
assets:
  - {id: press-7, machine: {standard: iso10816-3, group: 2, foundation: rigid, rpm: 1480}}
sensors:
  - {id: m1, asset: press-7, modbus: {host: 10.0.0.21, device_id: 1}}
  - {id: m2, asset: press-7, modbus: {host: 10.0.0.21, device_id: 2}, channels: [z]}
  - {id: m3, asset: press-7, modbus: {host: 10.0.0.21, port: 5020}}
store: {path: /tmp/o.db}
"""


def test_same_host_other_device_id_or_port_is_fine(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD), environ={})
    assert [(s.modbus.port, s.modbus.device_id) for s in config.sensors] == [
        (502, 1),
        (502, 2),
        (5020, 1),
    ]


def test_channel_must_exist_in_the_profile(tmp_path: Path) -> None:
    assert lines(write(tmp_path, GOOD.replace("channels: [z]", "channels: [z, y]"))) == [
        "config.yaml:6:85: sensors[1].channels[1]: profile 'banner-qm30vt2' has no channel "
        "'y'; its channels: z, x"
    ]


HTTP = """\
gateway: {id: gw-01}
assets:
  - {id: a, machine: {standard: iso10816-1, class: I, rpm: 3000}}
sensors:
  - {id: s, asset: a, modbus: {host: h}}
uplinks:
  - http: {url: "https://x/v1/alerts", token_file: TOKEN_FILE}
store: {path: /tmp/o.db}
"""


def test_token_file_is_read_stripped_and_never_printed(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("  s3cret-token\n")
    path = write(tmp_path, HTTP.replace("TOKEN_FILE", "token"))  # relative to the config
    config = load_config(path, environ={})
    http = config.uplinks[0].http
    assert http.token == "s3cret-token"
    # Resolved against the configuration's folder once, so a re-read after a 401 (or a
    # token rotation) finds the same file whatever the working directory is.
    assert http.token_file == tmp_path / "token" and http.token_file.is_absolute()
    from agent.config import summary

    text = summary(config)
    assert "s3cret" not in text and f"token set from {tmp_path / 'token'}" in text


@pytest.mark.parametrize(("mode", "warned"), [(0o600, False), (0o640, True), (0o644, True)])
def test_a_token_file_readable_by_others_is_warned_about(
    tmp_path: Path, mode: int, warned: bool
) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    token.chmod(mode)
    out, err = io.StringIO(), io.StringIO()
    assert main_check(write(tmp_path, HTTP.replace("TOKEN_FILE", "token")), out, err) == 0
    expected = f"warning: {token} is readable by other users (mode {mode:04o}); chmod 600"
    assert (expected in out.getvalue()) == warned, out.getvalue()
    assert "s3cret" not in out.getvalue() + err.getvalue()


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (
            "missing",
            "does not exist; create it with the token as its only content, or fix the path",
        ),
        ("empty", "is empty; write the token into it"),
        ("dir", "is a directory; give the file that holds the token"),
        ("unreadable", "cannot be read (Permission denied); let the agent's user read it"),
        ("notdir", "cannot be read (Not a directory); let the agent's user read it"),
    ],
)
def test_token_file_problems(tmp_path: Path, setup: str, message: str) -> None:
    token = tmp_path / "tok"
    if setup == "notdir":
        (tmp_path / "file").write_text("x")
        token = tmp_path / "file" / "tok"
    elif setup == "empty":
        token.write_text(" \n")
    elif setup == "dir":
        token.mkdir()
    elif setup == "unreadable":
        if os.geteuid() == 0:
            pytest.skip("root reads any file, so an unreadable file cannot be made here")
        token.write_text("x")
        token.chmod(0)
    found = lines(write(tmp_path, HTTP.replace("TOKEN_FILE", str(token))))
    assert found == [
        f"config.yaml:7:52: uplinks[0].http.token_file: token file '{token}' {message}"
    ]


def test_token_and_token_file_together(tmp_path: Path) -> None:
    (tmp_path / "tok").write_text("abc")
    text = HTTP.replace("token_file: TOKEN_FILE", "token: xyz, token_file: tok")
    assert lines(write(tmp_path, text)) == [
        "config.yaml:7:11: uplinks[0].http: give token or token_file, not both"
    ]


def test_an_unknown_id_in_a_plant_sized_file_lists_a_few_known_ids_not_all(
    tmp_path: Path,
) -> None:
    # 2000 sensors on 2000 machines and one typo: the line listed all 2000 asset ids
    # (18 kB on one line, per mistake).
    n = 2000
    text = "gateway: {id: gw-01}\nassets:\n"
    text += "".join(
        f"  - {{id: pump-{i}, machine: {{standard: iso10816-3, group: 2, "
        "foundation: rigid, rpm: 1480}}\n"
        for i in range(n)
    )
    text += "sensors:\n"
    text += "".join(
        f"  - {{id: s{i}, asset: {'pmup-7' if i == 7 else f'pump-{i}'}, "
        f"modbus: {{host: 10.0.0.{i % 200 + 1}, device_id: {i // 200 + 1}}}}}\n"
        for i in range(n)
    )
    text += "store: {path: /tmp/o.db}\n"
    (line,) = lines(write(tmp_path, text))
    assert line.startswith(f"config.yaml:{n + 11}:")
    assert "no asset has id 'pmup-7'" in line and "(did you mean 'pump-7'?)" in line
    assert f"and {n - 10} more" in line and len(line) < 400, len(line)
