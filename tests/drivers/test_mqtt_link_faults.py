"""The broker link when the broker or its publishers misbehave (real mosquitto): a
subscription the broker refuses, a retained reading replayed at every reconnect, a QoS 1
message delivered twice, readings out of order."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from pathlib import Path

import pytest

from agent.health_mqtt import mqtt_metrics
from tests.drivers.test_mqtt_link import Rig, until
from tests.mosquitto import Mosquitto

pytestmark = [pytest.mark.network]

DYNSEC = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"


class _Dynsec(Mosquitto):
    """A broker whose ACL (mosquitto's dynamic security plugin) lets user gw subscribe to
    ncd/allowed/# only; a refused subscription gets SUBACK 0x87 (v5) or 0x80 (3.1.1)."""

    def _conf(self) -> Path:
        salt = os.urandom(12)
        digest = hashlib.pbkdf2_hmac("sha512", b"secret", salt, 101)
        acl = [{"acltype": "subscribePattern", "topic": "ncd/allowed/#", "allow": True}]
        rules = {
            "clients": [{
                "username": "gw", "password": base64.b64encode(digest).decode(),
                "salt": base64.b64encode(salt).decode(), "iterations": 101,
                "roles": [{"rolename": "gw"}],
            }],
            "roles": [{"rolename": "gw", "acls": acl}],
            "defaultACLAccess": {"publishClientSend": True, "publishClientReceive": True,
                                 "subscribe": False, "unsubscribe": True},
        }  # fmt: skip
        (self.folder / "dynsec.json").write_text(json.dumps(rules))
        conf = super()._conf()
        text = conf.read_text() + f"plugin {DYNSEC}\n"
        conf.write_text(text + f"plugin_opt_config_file {self.folder / 'dynsec.json'}\n")
        return conf


@pytest.mark.skipif(not Path(DYNSEC).exists(), reason=f"{DYNSEC} is missing (mosquitto)")
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_a_subscription_the_broker_refuses_is_reported_not_silent(
    tmp_path: Path, protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    with _Dynsec(tmp_path / "acl") as broker:
        rig = Rig(broker, username="gw", password="secret", protocol=protocol)
        caplog.set_level(logging.ERROR, logger="edge_agent.drivers.mqtt")
        async with rig.running() as link:
            await until(lambda: link.status()["refused_subscriptions"], 5)
            status = link.status()
    # Without this the sensor would only look stale, for no reason anyone could see.
    refused = status["refused_subscriptions"]
    assert list(refused) == ["ncd/vibration/+"]
    assert refused["ncd/vibration/+"] in ("Not authorized", "Unspecified error")
    assert "refused" in (status["last_error"] or "")
    assert rig.sensor.last_error is not None and "refused" in rig.sensor.last_error
    assert any("refused" in r.getMessage() for r in caplog.records)
    families = {m.name: m for m in mqtt_metrics({"mqtt": [status]})}
    [sample] = families["edge_mqtt_subscription_refused"].samples
    assert sample.labels == {"broker": "b", "topic": "ncd/vibration/+"} and sample.value == 1
