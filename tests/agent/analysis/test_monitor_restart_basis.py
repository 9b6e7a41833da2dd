"""A restart with a configuration edited while the agent was stopped, a reload before a
channel's first reading since the start, and a replaced sensor: the saved model is judged
by the basis it was learned under (agent.analysis.basis), as a live reload judges it.

Real Monitor and SQLite store: what one process saved is what the next one starts from.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from agent.analysis.basis import basis_change, basis_of, decoder_digest, source_digests
from agent.analysis.monitor import Monitor, Update
from agent.config import Config
from agent.store import Outbox
from drivers.payloads import DecoderLibrary
from drivers.profiles import ProfileLibrary
from drivers.reading import Reading
from tests.agent.analysis.test_monitor_reconfigure import T0, degrading, vib
from tests.agent.analysis.test_monitor_reconfigure import degraded_config as config

ROOT = Path(__file__).resolve().parents[3]
SCHEMA = json.loads((ROOT / "agent" / "schemas" / "alert-v1.json").read_text())
AT = T0 + timedelta(hours=2)  # the restart
KEY = "press-7/m1/z"


def store_at(tmp_path: Path) -> Outbox:
    return Outbox(tmp_path / "o.db", gateway_id="gw-t", max_bytes=1 << 30)


async def store(ob: Outbox, update: Update) -> list[dict[str, Any]]:
    recs = [r for r in await ob.append(update.drafts, update.state)]
    for rec in recs:
        jsonschema.validate(rec, SCHEMA)
    return recs


async def degrade(tmp_path: Path) -> tuple[float, float]:
    """The first process: baseline learned, then the machine degrades (accel RMS doubles,
    velocity over its ISO 20816-1 alarm): the trend alert is raised and escalated (the
    first process stops there: the step then flat would later revise the critical, since
    no failure comes). Returns (baseline learned at, onset), as saved."""
    async with store_at(tmp_path) as ob:
        m = Monitor(config(tmp_path))
        m.close_unconfigured(T0)
        for i in range(32):
            await store(ob, m.update(degrading(i)))
            if m._channels[("m1", "z")].trend.active == 2:
                break
        ch = m._channels[("m1", "z")]
        assert ch.trend.active == 2 and ch.onset_s is not None
        assert ch.hi.learned_at_s is not None
        return ch.hi.learned_at_s, ch.onset_s


async def restart(
    tmp_path: Path, cfg: Config, digests: dict[str, str] | None = None
) -> tuple[Monitor, list[dict[str, Any]]]:
    """A new process on the saved state with `cfg` (and its source files' `digests`): the
    monitor and the records its start stored."""
    async with store_at(tmp_path) as ob:
        m = Monitor(cfg, state=await ob.load_state(), digests=digests)
        return m, await store(ob, m.close_unconfigured(AT))


async def saved(tmp_path: Path) -> dict[str, str]:
    async with store_at(tmp_path) as ob:
        return await ob.load_state()


def later(m: Monitor, n: int = 80) -> list[tuple[str, str]]:
    """n readings (800 s, past the 300 s clear hold) of the still degraded machine."""
    out = []
    for i in range(100, 100 + n):
        r = vib(i, 2.0, 1.9)
        r = Reading(r.sensor_id, r.channel, AT + timedelta(seconds=10 * (i - 99)), r.features)
        # A revision of the critical (same episode) may come: the step then flat fails
        # nothing; what must not come is a clear or a new raise.
        out += [(d.kind, d.state) for d in m.update(r).drafts if not d.evidence.get("revision")]
    return out


RELEARN = {
    "speed": ({"assets.0.machine.rpm": 990}, "machine.rpm 1480 -> 990"),
    "register profile": (
        {"sensors.0.modbus.profile": "machinesaver-trivibe"},
        "modbus.profile banner-qm30vt2 -> modbus.profile machinesaver-trivibe",
    ),
    "replaced sensor (device id)": (
        {"sensors.0.modbus.device_id": 7},
        "sensor replaced: modbus tcp 127.0.0.1:5020 device_id 1 -> "
        "modbus tcp 127.0.0.1:5020 device_id 7",
    ),
    "replaced sensor (host)": (
        {"sensors.0.modbus.host": "127.0.0.2"},
        "sensor replaced: modbus tcp 127.0.0.1:5020 device_id 1 -> "
        "modbus tcp 127.0.0.2:5020 device_id 1",
    ),
}


@pytest.mark.parametrize(("edit", "what"), RELEARN.values(), ids=RELEARN)
async def test_a_restart_after_an_edit_that_invalidates_the_baseline_relearns_it(
    tmp_path: Path, edit: dict[str, Any], what: str
) -> None:
    """Before: the saved baseline came back as it was, measured with another speed, scaling
    or device, and the trend alert raised against it stayed open. Now the start relearns it
    and closes that alert, saying why; nothing clears or raises later from it."""
    await degrade(tmp_path)
    m, recs = await restart(tmp_path, config(tmp_path, edit))
    (rec,) = recs
    reason = f"closed at start: baseline relearned after {what} while the agent was stopped"
    assert (rec["kind"], rec["state"], rec["evidence"]["reason"]) == ("trend", "cleared", reason)
    assert rec["detected_at"] == "2026-11-23T10:00:00.000Z"
    assert rec["evidence"]["closed_level"] == "critical"
    state = await saved(tmp_path)
    assert json.loads(state[f"{KEY}/trend"])["active"] == 0
    model = json.loads(state[f"{KEY}/model"])
    assert model["onset_s"] is None and model["hi"] != {}
    assert model["basis"] == basis_of(*_placed(config(tmp_path, edit))).to_dict()
    ch = m._channels[("m1", "z")]
    assert (ch.hi.ready, ch.trend.active) == (False, 0)
    assert later(m) == []  # relearned from the degraded machine: no clear, no raise
    assert m._channels[("m1", "z")].hi.ready
    # The next start with the same file finds the basis it saved: nothing more.
    _, again = await restart(tmp_path, config(tmp_path, edit))
    assert again == []


def _placed(cfg: Config) -> tuple[Any, Any]:
    return cfg.assets[0], cfg.sensors[0]


HISTORY_ONLY = {
    "trend bin": {"assets.0.alerting.trend_bin_s": 20},
    "failure metric": {"assets.0.failure": {"metric": "accel_rms_g"}},
    "bearing": {"assets.0.bearing": {"balls": 9, "ball_mm": 7.9, "pitch_mm": 38.5}},
}


@pytest.mark.parametrize("edit", HISTORY_ONLY.values(), ids=HISTORY_ONLY)
async def test_a_restart_after_a_history_edit_rebuilds_the_history_only(
    tmp_path: Path, edit: dict[str, Any]
) -> None:
    """Before: the history binned under the old bin width / metric / bearing came back (a
    10 s history read as 20 s bins). Now it starts again; baseline, onset and the open
    alert stay, with no record."""
    learned_at, onset = await degrade(tmp_path)
    bins = json.loads((await saved(tmp_path))[f"{KEY}/model"])["history"]
    m, recs = await restart(tmp_path, config(tmp_path, edit))
    assert recs == []
    ch = m._channels[("m1", "z")]
    assert (ch.hi.learned_at_s, ch.onset_s, ch.trend.active) == (learned_at, onset, 2)
    assert ch.history.to_dict() != bins and ch.history.last() is None
    assert ch.history.bin_s == (20.0 if "assets.0.alerting.trend_bin_s" in edit else 10.0)
    model = json.loads((await saved(tmp_path))[f"{KEY}/model"])
    assert model["history"] == ch.history.to_dict() and model["onset_s"] == onset
    assert later(m) == []  # still the same open episode


async def test_a_restart_with_the_same_or_an_unrelated_edit_keeps_everything(
    tmp_path: Path,
) -> None:
    learned_at, onset = await degrade(tmp_path)
    edit = {"assets.0.alerting.clear_hold_s": 600, "sensors.0.modbus.timeout_s": 0.4}
    m, recs = await restart(tmp_path, config(tmp_path, edit))
    assert recs == [] and not m._channels  # nothing loaded before its first reading
    m.update(vib(40, 2.0, 1.9))
    ch = m._channels[("m1", "z")]
    assert (ch.hi.learned_at_s, ch.onset_s, ch.trend.active) == (learned_at, onset, 2)


async def test_a_model_saved_without_a_basis_is_kept_as_it_was(tmp_path: Path) -> None:
    """A store written before the basis was saved: nothing to compare, so the model is
    restored as before (documented); it is saved with the current basis from then on."""
    learned_at, onset = await degrade(tmp_path)
    async with store_at(tmp_path) as ob:
        model = json.loads((await ob.load_state())[f"{KEY}/model"])
        del model["basis"]
        await ob.append([], {f"{KEY}/model": json.dumps(model)})
    m, recs = await restart(tmp_path, config(tmp_path, {"assets.0.machine.rpm": 990}))
    assert recs == []
    up = m.update(vib(40, 2.0, 1.9))
    ch = m._channels[("m1", "z")]
    assert (ch.hi.learned_at_s, ch.onset_s, ch.trend.active) == (learned_at, onset, 2)
    assert up.drafts == []
    assert ch.basis == basis_of(*_placed(config(tmp_path, {"assets.0.machine.rpm": 990})))


async def test_a_reload_before_the_first_reading_since_the_start_relearns(
    tmp_path: Path,
) -> None:
    """Before: the channel was not running yet, so the reload compared nothing and its
    first reading restored the model learned at the old speed."""
    await degrade(tmp_path)
    m, recs = await restart(tmp_path, config(tmp_path))
    assert recs == []
    async with store_at(tmp_path) as ob:
        recs = await store(ob, m.reconfigure(config(tmp_path, {"assets.0.machine.rpm": 990}), AT))
    (rec,) = recs
    assert rec["evidence"]["reason"] == (
        "cleared by a reload: baseline relearned after machine.rpm 1480 -> 990"
    )
    assert later(m) == []
    assert json.loads((await saved(tmp_path))[f"{KEY}/trend"])["active"] == 0


async def test_a_live_reload_that_replaces_the_sensor_relearns_saying_so(tmp_path: Path) -> None:
    """Before: a new device_id (another physical sensor at the same sensor id) kept the old
    sensor's baseline; the new sensor was judged against another device's."""
    async with store_at(tmp_path) as ob:
        m = Monitor(config(tmp_path))
        for i in range(32):
            await store(ob, m.update(degrading(i)))
        recs = await store(ob, m.reconfigure(config(tmp_path, {"sensors.0.modbus.device_id": 7})))
    (rec,) = recs
    assert rec["evidence"]["reason"] == (
        "cleared by a reload: baseline relearned after sensor replaced: modbus tcp "
        "127.0.0.1:5020 device_id 1 -> modbus tcp 127.0.0.1:5020 device_id 7"
    )
    assert not m._channels[("m1", "z")].hi.ready


def mqtt_config(tmp_path: Path, **source: Any) -> Config:
    data = config(tmp_path).model_dump(mode="json", by_alias=True)
    data["mqtt"] = [{"id": "plant", "host": "127.0.0.1", "port": 1883}]
    mqtt = {"broker": "plant", "topic": "ncd/+/vib", "decoder": "ncd-processed",
            "key": "a1", "key_from": "payload:addr", **source}  # fmt: skip
    data["sensors"][0] = {"id": "m1", "asset": "press-7", "channels": ["z"], "mqtt": mqtt}
    return Config.model_validate(data)


@pytest.mark.parametrize(
    ("source", "cause"),
    [
        ({"key": "b7"}, "sensor replaced: mqtt broker plant topic ncd/+/vib key a1 -> "
                        "mqtt broker plant topic ncd/+/vib key b7"),
        ({"topic": "ncd/2/vib"}, "sensor replaced: mqtt broker plant topic ncd/+/vib key a1 -> "
                                 "mqtt broker plant topic ncd/2/vib key a1"),
        ({"decoder": "generic-json"}, "mqtt.decoder ncd-processed -> mqtt.decoder generic-json"),
        ({"stale_after_s": 60, "qos": 0}, None),
    ],
    ids=["key", "topic", "decoder", "staleness and qos"],
)  # fmt: skip
async def test_an_mqtt_sensor_is_the_same_device_by_broker_topic_and_key(
    tmp_path: Path, source: dict[str, Any], cause: str | None
) -> None:
    before, after = mqtt_config(tmp_path), mqtt_config(tmp_path, **source)
    assert basis_change(basis_of(*_placed(before)), basis_of(*_placed(after))).relearn == cause
    # ... and a restart judges it so (the saved basis against the edited file).
    async with store_at(tmp_path) as ob:
        m = Monitor(before)
        for i in range(32):
            r = degrading(i)
            await store(ob, m.update(Reading(r.sensor_id, r.channel, r.timestamp, r.features,
                                             transport="mqtt")))  # fmt: skip
    _, recs = await restart(tmp_path, after)
    reasons = [r["evidence"]["reason"] for r in recs]
    why = f"closed at start: baseline relearned after {cause} while the agent was stopped"
    assert reasons == ([] if cause is None else [why])
    assert all(r["sensor"]["transport"] == "mqtt" for r in recs)


@pytest.mark.parametrize("host", ["localhost", "LocalHost.", "::1"])
async def test_the_same_host_written_otherwise_is_the_same_device(
    tmp_path: Path, host: str
) -> None:
    """127.0.0.1 written as localhost, in capitals, with a trailing dot: the same device, so
    a restart keeps the baseline and the open trend alert (it used to relearn and close it)."""
    learned_at, onset = await degrade(tmp_path)
    m, recs = await restart(tmp_path, config(tmp_path, {"sensors.0.modbus.host": host}))
    assert recs == []  # no record closing the open alert
    m.update(vib(40, 2.0, 1.9))
    ch = m._channels[("m1", "z")]
    assert (ch.hi.learned_at_s, ch.onset_s, ch.trend.active) == (learned_at, onset, 2)


def _shipped_copy(
    shipped: Path, folder: Path, name: str, edits: dict[str, str], note: tuple[str, str]
) -> Path:
    """A shipped profile or decoder file copied into `folder` as <name>.yaml under that name,
    each edit (old text: new) made, and the note (key, value), if any, put in that key's
    line: an integrator's own copy, edited in place."""
    text = shipped.read_text().replace(f"name: {shipped.stem}", f"name: {name}")
    for old, new in edits.items():
        text = text.replace(old, new)
    key, value = note
    if value:
        text = text.replace(f"{key}: ", f"{key}: {value!r} #", 1)
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.yaml").write_text(text)
    return folder


def _profile_file(folder: Path, velocity_scale: str = "0.001", document: str = "") -> Path:
    """plant-vt: the shipped Banner profile under another name, in a profiles_dir, with its
    velocity scale (and document line) as given."""
    return _shipped_copy(
        ROOT / "drivers" / "profiles" / "banner-qm30vt2.yaml", folder, "plant-vt",
        {"scale: 0.001, unit: mm/s": f"scale: {velocity_scale}, unit: mm/s"},
        ("document", document),
    )  # fmt: skip


def _digests(cfg: Config, folder: Path) -> dict[str, str]:
    return source_digests(cfg, ProfileLibrary.load(folder))


async def _open_trend(tmp_path: Path, cfg: Config, digests: dict[str, str]) -> None:
    """The first process, its source files' `digests` saved: baseline learned, then the
    machine degrades and the trend alert is open."""
    async with store_at(tmp_path) as ob:
        m = Monitor(cfg, digests=digests)
        for i in range(32):
            await store(ob, m.update(degrading(i)))
        assert m._channels[("m1", "z")].trend.active >= 1  # open (its critical revised)


def _relearn(m: Monitor) -> None:
    """12 readings of the degraded machine after the restart: the baseline learned again."""
    for i in range(12):
        r = vib(i, 2.0, 1.9)
        m.update(Reading(r.sensor_id, r.channel, AT + timedelta(seconds=10 * (i + 1)), r.features))
    assert m._channels[("m1", "z")].hi.ready


async def test_a_profile_file_edited_under_the_same_name_relearns_at_restart_and_reload(
    tmp_path: Path,
) -> None:
    """Before: a profile corrected in place (velocity scale 0.001 -> 0.01: values x10) kept
    the baseline learned from the old values, named the same; the trend alert raised
    against it stayed open and every reading was judged against the old scale."""
    folder = _profile_file(tmp_path / "profiles")
    cfg = config(tmp_path, {"sensors.0.modbus.profile": "plant-vt"})
    await _open_trend(tmp_path, cfg, _digests(cfg, folder))
    _profile_file(folder, velocity_scale="0.01")  # edited while the agent was stopped
    m, (rec,) = await restart(tmp_path, cfg, _digests(cfg, folder))
    assert rec["evidence"]["reason"] == (
        "closed at start: baseline relearned after modbus.profile plant-vt edited: it reads "
        "other values while the agent was stopped"
    )
    assert not m._channels[("m1", "z")].hi.ready
    _relearn(m)  # learned again; then a live reload after editing it back relearns too
    _profile_file(folder)
    m.reconfigure(cfg, digests=_digests(cfg, folder))
    assert not m._channels[("m1", "z")].hi.ready


async def test_a_profile_edit_that_reads_the_same_values_or_an_older_model_keeps_it(
    tmp_path: Path,
) -> None:
    """Its description edited, or a model saved before profile digests were kept (an
    upgrade): the baseline stays."""
    folder = _profile_file(tmp_path / "profiles")
    cfg = config(tmp_path, {"sensors.0.modbus.profile": "plant-vt"})
    m = Monitor(cfg)  # no digests: as an older agent saved its models
    for i in range(12):
        m.update(vib(i, 1.0, 1.0))
    assert m._channels[("m1", "z")].hi.ready
    assert m.reconfigure(cfg, digests=_digests(cfg, folder)).drafts == []
    assert m._channels[("m1", "z")].hi.ready
    _profile_file(folder, document="Plant copy, reviewed 2026-11")
    assert m.reconfigure(cfg, digests=_digests(cfg, folder)).drafts == []
    assert m._channels[("m1", "z")].hi.ready


def _decoder_file(folder: Path, velocity_scale: float = 1.0, description: str = "") -> Path:
    """plant-json: the shipped generic-json decoder under another name, in a decoders_dir,
    its z velocity field scaled as given (and its description as given)."""
    field = "{path: z.velocity_rms_mm_s, feature: velocity_rms_mm_s, channel: z, unit: mm/s,"
    return _shipped_copy(
        ROOT / "drivers" / "payloads" / "generic-json.yaml", folder, "plant-json",
        {field: f"{field} scale: {velocity_scale},"}, ("description", description),
    )  # fmt: skip


def _mqtt_config(tmp_path: Path, folder: Path) -> Config:
    """m1 as an MQTT sensor decoded by plant-json."""
    return config(
        tmp_path,
        {
            "mqtt": [{"id": "plant", "host": "127.0.0.1", "port": 1883}],
            "decoders_dir": str(folder),
            "sensors.0.modbus": None,
            "sensors.0.mqtt": {"broker": "plant", "topic": "t/m1", "decoder": "plant-json"},
        },
    )


def _decoder_digests(cfg: Config, folder: Path) -> dict[str, str]:
    return source_digests(cfg, ProfileLibrary.load(None), DecoderLibrary.load(folder))


async def test_a_decoder_file_edited_under_the_same_name_relearns_at_restart_and_reload(
    tmp_path: Path,
) -> None:
    """Before: an MQTT decoder corrected in place (velocity scale 1 -> 10: values x10)
    kept the baseline learned from the old values, named the same; the open trend alert
    stayed open against it. Its description edited only: the baseline stays."""
    folder = _decoder_file(tmp_path / "decoders")
    cfg = _mqtt_config(tmp_path, folder)
    await _open_trend(tmp_path, cfg, _decoder_digests(cfg, folder))
    _decoder_file(folder, description="plant copy, reviewed")  # words only: kept
    _, recs = await restart(tmp_path, cfg, _decoder_digests(cfg, folder))
    assert recs == []
    _decoder_file(folder, velocity_scale=10.0)  # edited while the agent was stopped
    m, (rec,) = await restart(tmp_path, cfg, _decoder_digests(cfg, folder))
    assert rec["evidence"]["reason"] == (
        "closed at start: baseline relearned after mqtt.decoder plant-json edited: it reads "
        "other values while the agent was stopped"
    )
    assert not m._channels[("m1", "z")].hi.ready
    _relearn(m)  # learned again; a live reload after editing it back relearns too
    _decoder_file(folder)
    m.reconfigure(cfg, digests=_decoder_digests(cfg, folder))
    assert not m._channels[("m1", "z")].hi.ready


async def _zone_c(tmp_path: Path) -> Monitor:
    """Baseline learned, then velocity 5 mm/s (ISO zone C): the severity alert is open."""
    async with store_at(tmp_path) as ob:
        m = Monitor(config(tmp_path))
        for i in range(32):
            await store(ob, m.update(degrading(i, 2.0, 5.0)))
    assert m._channels[("m1", "z")].severity.active
    return m


def _from(m: Monitor, start: int, n: int, velocity: float) -> list[tuple[str, str]]:
    out = []
    for i in range(start, start + n):
        r = vib(i, 1.0, velocity)
        r = Reading(r.sensor_id, r.channel, AT + timedelta(seconds=10 * (i + 1)), r.features)
        out += [(d.kind, d.state) for d in m.update(r).drafts]
    return out


REPLACED = (
    "sensor replaced: modbus tcp 127.0.0.1:5020 device_id 1 -> modbus tcp 127.0.0.1:5020 "
    "device_id 7"
)


async def test_a_replaced_sensor_closes_the_old_sensor_s_severity_alert(tmp_path: Path) -> None:
    """Before: the ISO severity alert raised on the old sensor's readings stayed open after
    a reload that put another device at the sensor id (the trend alert was closed): the
    new sensor's zone A readings then 'cleared' it after the clear hold, as if the machine
    had recovered, and zone C readings carried on the old episode. Now it is closed at
    once, saying why; the new sensor's readings raise their own after the debounce."""
    m = await _zone_c(tmp_path)
    replaced = config(tmp_path, {"sensors.0.modbus.device_id": 7})
    async with store_at(tmp_path) as ob:
        recs = await store(ob, m.reconfigure(replaced, AT))
    by_kind = {r["kind"]: r for r in recs}
    assert sorted(by_kind) == ["severity", "trend"]
    sev = by_kind["severity"]
    assert (sev["state"], sev["evidence"]["closed_level"]) == ("cleared", "critical")
    assert sev["evidence"]["reason"] == (
        f"cleared by a reload: {REPLACED}; the new readings are judged afresh"
    )
    assert _from(m, 0, 20, 0.8) == []  # zone A: nothing to clear, nothing raised
    assert ("severity", "raised") in _from(m, 20, 5, 5.0)  # zone C: its own episode


async def test_a_sensor_replaced_while_stopped_closes_its_severity_alert_at_start(
    tmp_path: Path,
) -> None:
    await _zone_c(tmp_path)
    _, recs = await restart(tmp_path, config(tmp_path, {"sensors.0.modbus.device_id": 7}))
    sev = next(r for r in recs if r["kind"] == "severity")
    assert sev["evidence"]["reason"] == (
        f"closed at start: {REPLACED} while the agent was stopped; the new readings are "
        "judged afresh"
    )
    assert json.loads((await saved(tmp_path))[f"{KEY}/severity"])["active"] == 0
    # A new speed alone keeps the severity alert: the readings are the same sensor's.
    m2 = await _zone_c(tmp_path / "speed")
    update = m2.reconfigure(config(tmp_path / "speed", {"assets.0.machine.rpm": 990}), AT)
    assert [d.kind for d in update.drafts] == ["trend"]
    assert m2._channels[("m1", "z")].severity.active


def _raw_decoder_file(folder: Path, rate_field: str = "sample_rate", description: str = "") -> Path:
    """site-raw: the shipped raw-int16 decoder under another name, its sample rate read from
    the header field named (and its description as given)."""
    return _shipped_copy(
        ROOT / "drivers" / "payloads" / "raw-int16.yaml", folder, "site-raw",
        {"sample_rate: sample_rate": f"sample_rate: {rate_field}"}, ("description", description),
    )  # fmt: skip


def test_a_raw_int16_sensor_has_a_digest_and_an_edit_changes_it(tmp_path: Path) -> None:
    """Before: source_digests raised TypeError ('method' object is not iterable) for every
    configuration with a raw-int16 MQTT sensor (its decoder's `fields` is a method), so
    `edge-agent run` crashed at start ('agent crashed', restarted by systemd forever) and a
    reload failed. Now such a sensor has a digest like any other: the words of its file
    change nothing, the header field its sample rate comes from does."""
    folder = _raw_decoder_file(tmp_path / "decoders")
    cfg = config(
        tmp_path,
        {
            "mqtt": [{"id": "plant", "host": "127.0.0.1", "port": 1883}],
            "decoders_dir": str(folder),
            "sensors.0.modbus": None,
            "sensors.0.mqtt": {"broker": "plant", "topic": "t/m1", "decoder": "site-raw"},
        },
    )
    first = _decoder_digests(cfg, folder)
    assert set(first) == {"m1"}
    _raw_decoder_file(folder, description="plant copy, reviewed")
    assert _decoder_digests(cfg, folder) == first
    _raw_decoder_file(folder, rate_field="samples")  # another header field: other values
    assert _decoder_digests(cfg, folder) != first


async def test_a_decoder_file_with_its_fields_reordered_keeps_the_baseline(
    tmp_path: Path,
) -> None:
    """Before: a decoder file whose fields were only reordered (grouped by axis instead of
    by feature: every value read the same) had another digest, so a reload or a restart
    relearned the baseline and closed the open severity and trend alerts 'after mqtt.decoder
    plant-json edited: it reads other values', to raise them again as new. Now the order of
    the fields (and of a raw-int16 header's) is not part of the digest."""
    folder = _decoder_file(tmp_path / "decoders")
    cfg = _mqtt_config(tmp_path, folder)
    m = Monitor(cfg, digests=_decoder_digests(cfg, folder))
    for i in range(32):
        m.update(degrading(i, 2.0, 5.0))
    assert m._channels[("m1", "z")].severity.active
    path = folder / "plant-json.yaml"
    lines = path.read_text().splitlines()
    rows = [i for i, line in enumerate(lines) if line.strip().startswith("- {path")]
    moved = [lines[i] for i in rows[::-1]]  # every field, last first
    for i, line in zip(rows, moved, strict=True):
        lines[i] = line
    path.write_text("\n".join(lines) + "\n")
    assert m.reconfigure(cfg, AT, digests=_decoder_digests(cfg, folder)).drafts == []
    assert m._channels[("m1", "z")].hi.ready
    raw = _raw_decoder_file(tmp_path / "raw")
    before = decoder_digest(DecoderLibrary.load(raw).get("site-raw"))
    text = (raw / "site-raw.yaml").read_text()
    magic = "  - {name: magic, offset: 0, type: uint16, equals: 0x5657}\n"
    scale = "  - {name: scale_g, offset: 12, type: float32}\n"
    (raw / "site-raw.yaml").write_text(text.replace(magic, "").replace(scale, scale + magic))
    assert decoder_digest(DecoderLibrary.load(raw).get("site-raw")) == before
