"""Uplinks from the configuration: the one place that builds them (a reload rebuilds here)."""

from __future__ import annotations

import random
from typing import Any

from agent.analysis.severity import zone_table
from agent.config import Config
from agent.store import Outbox
from agent.uplink._cmms import CmmsTransport
from agent.uplink._delivery import Delivery
from agent.uplink._http import HttpTransport
from agent.uplink._transport import Transport
from agent.uplink._workorder import AssetFacts


def build_uplinks(
    config: Config, outbox: Outbox, *, rng: random.Random | None = None
) -> list[Delivery]:
    """One delivery loop per configured uplink, named as `config.uplink_names()`.

    Args:
        config: the validated configuration.
        outbox: the open (or about to open) outbox, created with the same uplink names.
        rng: random source for the jitter (tests pass a seeded one).
    """
    out = []
    for name, u in zip(config.uplink_names(), config.uplinks, strict=True):
        transport: Transport
        if u.http is not None:
            transport = HttpTransport(u.http, name=name)
        elif u.cmms is not None:
            transport = CmmsTransport(u.cmms, name=name, assets=asset_facts(config),
                                      site=config.gateway.site, outbox=outbox)  # fmt: skip
        else:
            assert u.mqtt is not None
            from agent.uplink._mqtt import MqttTransport  # only here: aiomqtt is heavy

            transport = MqttTransport(u.mqtt, name=name, gateway_id=config.gateway.id)
        out.append(delivery(name, transport, outbox, u.settings, rng=rng))
    return out


def asset_facts(config: Config) -> dict[str, AssetFacts]:
    """Per configured asset, what a work order needs: zone table, planning horizon."""
    return {
        a.id: AssetFacts(zone_table(a.machine), a.planning_horizon_hours) for a in config.assets
    }


def delivery(name: str, transport: Transport, outbox: Outbox, settings: Any, **kw: Any) -> Delivery:
    """A delivery loop with an uplink's settings (batch_size, max_backoff_s,
    probe_interval_s); `kw` goes to Delivery (tests pass base_backoff_s, rng)."""
    assert settings is not None
    return Delivery(
        name,
        transport,
        outbox,
        batch_size=settings.batch_size,
        max_backoff_s=settings.max_backoff_s,
        probe_interval_s=settings.probe_interval_s,
        **kw,
    )
