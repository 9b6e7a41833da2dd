"""`edge-agent status` and `edge-agent alerts`: look at a (possibly running) agent.

`status` asks the running agent's /healthz and checks that the answer comes from the agent
of this configuration (gateway id and store identity): a port can be held by anyone. It
also shows the fleet history of completed lives per asset class (from the store) and the
life prior each asset gets from it.
`alerts` reads the store file read-only (WAL lets it read while the agent writes): the
newest alerts and where each was delivered, or (`--dead-letter`) what a backend refused.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

from agent.analysis.lifetime import AssetLives
from agent.analysis.reliability import FleetLife, plausible
from agent.config import Config
from agent.health import HEALTH_NOTE
from agent.identity import mismatch, open_store_ro
from agent.reach import Unreachable, get_json, health_url, listener_uid
from agent.store import READ_BUSY_S, StoreError, read_only

EXIT_OK = 0
EXIT_UNREACHABLE = 1
EXIT_NO_STORE = 1
EXIT_USAGE = 2


def store_summary(path: Path) -> dict[str, Any]:
    """Counts from the store file: pending, delivered, dead-lettered, last seq, per uplink.

    Raises:
        StoreError: the file is not a store this agent can read (or not migrated yet).
    """
    with read_only(path) as view:
        stats = view.stats()
        note = view.note(HEALTH_NOTE)
    health = _parsed_note(note)
    return {
        "path": str(path),
        "pending": stats.pending,
        "delivered": stats.delivered,
        "dead_lettered": stats.dead_lettered,
        "last_seq": stats.last_seq,
        "oldest_pending_age_s": stats.oldest_pending_age_s,
        "summaries_pending": stats.summaries_pending,
        "evicted_total": stats.evicted_total,
        "quarantined_total": stats.quarantined_total,
        "uplinks": {name: asdict(b) for name, b in stats.uplinks.items()},
        **({"health_endpoint": health} if health else {}),
    }


def _parsed_note(text: str | None) -> dict[str, Any] | None:
    """The agent's note of why its health endpoint is not served (agent.health)."""
    if text is None:
        return None
    try:
        note = json.loads(text)
    except ValueError:
        return {"error": text}
    return note if isinstance(note, dict) else {"error": text}


def fleet_history(path: Path) -> dict[str, list[FleetLife]]:
    """Completed lives by class from the store (empty for a store from before fleet lives)."""
    out: dict[str, list[FleetLife]] = {}
    with contextlib.closing(open_store_ro(path, READ_BUSY_S)) as conn:
        try:
            rows = conn.execute(
                "SELECT class, life_hours, failed, asset, ended_at FROM fleet_lives ORDER BY id"
            ).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return out  # a store from before fleet lives: nothing recorded yet
            raise
    for cls, hours, failed, asset, ended_at in rows:
        out.setdefault(cls, []).append(FleetLife(float(hours), bool(failed), asset, ended_at))
    return out


def reliability_summary(config: Config, fleet: dict[str, list[FleetLife]]) -> dict[str, Any]:
    """Per class: the fleet's completed lives; per asset: the life prior they give."""
    lives = AssetLives(config.assets, {}, fleet)
    classes: dict[str, Any] = {}
    for cls, items in sorted(fleet.items()):
        usable = [x for x in items if plausible(x.hours)]
        classes[cls] = {
            "failed_lives_hours": [round(x.hours, 3) for x in usable if x.failed],
            "replaced_healthy_hours": [round(x.hours, 3) for x in usable if not x.failed],
            "last_recorded": max(x.ended_at for x in items),
        }
        if len(usable) < len(items):  # inf/NaN would not be JSON; the prior ignores them too
            classes[cls]["ignored_lives"] = len(items) - len(usable)
    assets = {}
    for a in config.assets:
        prior = lives.prior(a)
        assets[a.id] = {
            "class": lives.class_of(a),
            "prior": None if prior is None else prior.source,
            "median_life_hours": None if prior is None else round(prior.median_life_hours, 1),
        }
    return {"classes": classes, "assets": assets}


def _fleet(config: Config, readable: bool) -> dict[str, Any]:
    """The fleet summary; without history when _store() found the store unreadable (busy,
    damaged): it said why once, and a second wait for a held lock would double the time."""
    path = config.store.path
    try:
        history = fleet_history(path) if readable else {}
    except (sqlite3.Error, OSError):
        history = {}  # unreadable since _store() looked: the next status says why
    return reliability_summary(config, history)


_CLASSES_SHOWN = 5  # in the one-line status


def _fleet_words(fleet: dict[str, Any]) -> str:
    """The fleet history for the one-line status: the classes the configured assets use
    (at most _CLASSES_SHOWN), and a count of the rest (`--json` lists them all)."""
    used = {a["class"] for a in fleet["assets"].values()}
    named = [c for c in fleet["classes"] if c in used]
    parts = []
    for cls in named[:_CLASSES_SHOWN]:
        c = fleet["classes"][cls]
        n, healthy = len(c["failed_lives_hours"]), len(c["replaced_healthy_hours"])
        words = f"{cls} {n} {'life' if n == 1 else 'lives'}"
        parts.append(words + (f" (+{healthy} replaced healthy)" if healthy else ""))
    more, unused = len(named) - _CLASSES_SHOWN, len(fleet["classes"]) - len(named)
    rest = [f"{more} more classes"] if more > 0 else []
    rest += [f"{unused} {'class' if unused == 1 else 'classes'} no asset uses"] if unused else []
    if rest:
        parts.append(f"and {' and '.join(rest)} (status --json)")
    return f"; fleet history: {', '.join(parts)}" if parts else ""


def _agent(config: Config) -> dict[str, Any]:
    """The running agent's /healthz, verified to be ours.

    Raises:
        Unreachable: no answer, or an answer from someone else.
    """
    url = health_url(config)
    # Asked first: another user's listener is not read at all (it could drip its answer).
    wrong = _impostor(config, url)
    if wrong is not None:
        raise Unreachable(f"the process at {url} is not this configuration's agent: {wrong}")
    status, body = get_json(url)
    if status not in (200, 503):  # 503 is a degraded agent, with its report
        error = body.get("error") if isinstance(body, dict) else None
        raise Unreachable(f"{url} answered HTTP {status}" + (f": {error}" if error else ""))
    wrong = mismatch(config, body.get("agent") if isinstance(body, dict) else None)
    if wrong is not None:
        raise Unreachable(f"the process at {url} is not this configuration's agent: {wrong}")
    return dict(body)


def _agent_uid(config: Config) -> tuple[int, Path] | None:
    """The agent's user: the owner of its control socket, else of its store (none can
    create files in the agent's directories but the agent, and root)."""
    for path in (config.control.socket, config.store.path):
        with contextlib.suppress(OSError):
            return path.stat().st_uid, path
    return None


def _impostor(config: Config, url: str) -> str | None:
    """Why the listener at `url` is not the agent's user's, or None when it may be.

    The identity in /healthz can be read, and served back, by any local user who takes the
    port while the agent is down (the agent then runs on without it): the owner of the
    listening socket tells them apart."""
    owner = _agent_uid(config)
    parts = urlsplit(url)
    if owner is None or parts.hostname is None or parts.port is None:
        return None
    uid = listener_uid(parts.hostname, parts.port)
    if uid is None or uid in (0, owner[0]):
        return None
    return (
        f"it runs as uid {uid}, the agent as uid {owner[0]} (the owner of {owner[1]}): "
        "another user holds the agent's health port; the agent itself runs without /healthz "
        "and /metrics until it is free"
    )


def _store(config: Config) -> dict[str, Any] | str:
    path = config.store.path
    try:
        if not path.exists():
            return f"no store yet at {path}"
        return store_summary(path)
    except (StoreError, sqlite3.Error, OSError) as exc:
        return f"store {path} unreadable here: {exc}"


def _counts(store: dict[str, Any]) -> str:
    text = (
        f"alerts {store.get('pending', 0)} pending, {store.get('delivered', 0)} delivered, "
        f"{store.get('dead_lettered', 0)} dead-lettered"
    )
    behind = [  # each uplink's own backlog, where it has one
        f"{name} {b['pending']} waiting"
        + (f", {b['dead_lettered']} dead" if b["dead_lettered"] else "")
        for name, b in (store.get("uplinks") or {}).items()
        if b and (b.get("pending") or b.get("dead_lettered"))
    ]
    return text + (f" (uplink {'; '.join(behind)})" if behind else "")


def _line(config: Config, agent: dict[str, Any] | None, problem: str | None, store: Any) -> str:
    gw = config.gateway.id
    if agent is None:
        stored = _counts(store) if isinstance(store, dict) else store
        noted = store.get("health_endpoint") if isinstance(store, dict) else None
        if noted:  # the agent runs (or ran) without its endpoint, and said why
            stored += (
                f"; the agent noted at {noted.get('since', '?')}: its health endpoint is not "
                f"served ({noted.get('error')}), retrying"
            )
        return f"{gw}: agent NOT reachable: {problem}; {stored}"
    sensors = agent.get("sensors", [])
    bad = [s for s in sensors if s.get("state") not in ("ok", "starting")]
    troubles = [str(s.get("last_error") or f"sensor {s['id']} {s.get('state')}") for s in bad]
    frozen = [s for s in sensors if s.get("stuck") and s not in bad]
    troubles += [f"sensor {s['id']} frozen at one value ({', '.join(s['stuck'])})" for s in frozen]
    garbage = [s for s in sensors if s.get("implausible_fault") and s not in bad + frozen]
    troubles += [
        f"sensor {s['id']} answers only implausible values for {s.get('bad_for_s', 0):.0f} s"
        f" ({', '.join(s.get('last_bad') or ['?'])})"
        for s in garbage
    ]
    troubles += [
        str(u.get("last_error") or f"uplink {u['name']} failing")
        for u in agent.get("uplinks", [])
        if u.get("consecutive_failures", 0) > 0
    ]
    troubles += [  # the alerts' side above: an integrator must tell whether alerts flow
        f"uplink {u['name']} feature summaries failing"
        + (" (alerts delivered)" if not u.get("consecutive_failures") else "")
        + f": {u.get('summaries_last_error') or '?'}"
        for u in agent.get("uplinks", [])
        if u.get("summaries_consecutive_failures", 0) > 0
    ]
    troubles += [
        f"mqtt broker {b['id']} down: {b.get('last_error') or 'connecting'}"
        for b in agent.get("mqtt", [])
        if not b.get("connected")
    ]
    troubles += [
        f"mqtt broker {b['id']} refused the subscription to {topic} ({reason})"
        for b in agent.get("mqtt", [])
        for topic, reason in (b.get("refused_subscriptions") or {}).items()
    ]
    hung = agent.get("process", {}).get("hung")
    troubles += [f"hung: {hung}"] if hung else []
    troubles += [f"store: {agent['store']['error']}"] if "error" in agent.get("store", {}) else []
    state = "ok" if agent.get("status") == "ok" else "DEGRADED"
    head = f"{gw}: agent running, {state}"
    if troubles:
        head += ": " + "; ".join(troubles)
    ok = sum(
        1
        for s in sensors
        if s.get("state") == "ok" and not s.get("stuck") and not s.get("implausible_fault")
    )
    starting = sum(1 for s in sensors if s.get("state") == "starting")
    waiting = f" ({starting} starting)" if starting else ""
    return (
        f"{head}; sensors {ok}/{len(sensors)} ok{waiting}; {_counts(agent.get('store', {}))}; "
        f"up {agent.get('uptime_s', 0) / 3600:.1f} h"
    )


def status(config: Config, out: TextIO, *, as_json: bool = False) -> int:
    """Print the agent's state (one line, or JSON); exit 1 when it cannot be reached."""
    agent: dict[str, Any] | None = None
    problem: str | None = None
    try:
        agent = _agent(config)
    except Unreachable as exc:
        problem = str(exc)
    store = _store(config)
    fleet = _fleet(config, readable=isinstance(store, dict))
    if as_json:
        report = {"gateway": config.gateway.id, "agent": agent or problem, "store": store,
                  "fleet": fleet}  # fmt: skip
        print(json.dumps(report, indent=2), file=out)
    else:
        print(_line(config, agent, problem, store) + _fleet_words(fleet), file=out)
    return EXIT_OK if agent is not None else EXIT_UNREACHABLE


def _alert_line(rec: dict[str, Any], deliveries: dict[str, dict[str, Any]]) -> str:
    sev = rec.get("severity") or {}
    where = f"{rec['asset']['id']} {rec['sensor']['id']}/{rec['sensor']['channel']}"
    zone = f" zone {sev['zone']}" if sev.get("zone") else ""  # none: no velocity zone measured
    level = f"{zone} {sev.get('level')}" if sev else ""
    if rec.get("_delivered_at") and not deliveries:  # e.g. a repair, with only a cmms uplink
        delivery = "kept here: no configured uplink carries it"
    elif rec.get("_delivered_at"):
        delivery = f"delivered {rec['_delivered_at']}"
    else:
        delivery = ", ".join(f"{u} {d['state'].replace('_', ' ')}" for u, d in deliveries.items())
    what = f"{rec['alert_id']} {rec['kind']} {rec['state']}"
    return f"{rec['detected_at']} {what} {where}{level}; {delivery or 'pending'}"


def _dead_line(d: dict[str, Any]) -> str:
    return (
        f"{d['dead_lettered_at']} {d['id']} ({d['class']}) refused by {d['uplink']}: {d['reason']}"
    )


def _print_dead(rows: list[dict[str, Any]], out: TextIO, as_json: bool) -> None:
    for r in rows:
        print(json.dumps(r, sort_keys=True) if as_json else _dead_line(r), file=out)


def _print_alerts(rows: list[dict[str, Any]], out: TextIO, as_json: bool) -> None:
    for r in rows:
        rec = r["record"]
        if "unreadable" in rec and "alert_id" not in rec:  # a damaged record (a bad sector)
            line = json.dumps(r, sort_keys=True) if as_json else (
                f"seq {r['seq']} {r['alert_id']}: {rec['unreadable']}")  # fmt: skip
            print(line, file=out)
            continue
        rec["_delivered_at"] = r["delivered_at"]
        rec["_deliveries"] = r["deliveries"]
        line = json.dumps(rec, sort_keys=True) if as_json else _alert_line(rec, r["deliveries"])
        print(line, file=out)


def alerts(
    config: Config,
    out: TextIO,
    err: TextIO,
    limit: int,
    *,
    as_json: bool = False,
    dead_letter: bool = False,
    uplink: str | None = None,
) -> int:
    """Print the newest alerts (or dead letters), newest first: one line each, or JSON Lines.

    Args:
        config: the configuration (store path, uplink names).
        out: where the lines go; err: where problems go.
        limit: at most this many.
        as_json: JSON Lines (each record with `_delivered_at`, once every uplink has it, and
            `_deliveries`, per uplink) instead of one human line each.
        dead_letter: dead letters instead (uplink, id, reason, when, record).
        uplink: only this uplink's dead letters.
    """
    names = config.uplink_names()
    if uplink is not None and uplink not in names:
        print(f"unknown uplink {uplink!r}; configured uplinks: {', '.join(names)}", file=err)
        return EXIT_USAGE
    try:
        if not config.store.path.exists():
            print(f"no store yet at {config.store.path}", file=err)
            return EXIT_NO_STORE
        shown = 0
        with read_only(config.store.path) as view:
            if dead_letter:  # printed as read, a page at a time: bounded memory
                for dead in view.dead_letter_pages(limit, uplink):
                    _print_dead(dead, out, as_json)
                    shown += len(dead)
            else:
                for page in view.recent_pages(limit):
                    _print_alerts(page, out, as_json)
                    shown += len(page)
        if not shown and not as_json:  # an empty answer, told (JSON Lines stay empty)
            what = "no dead letters" if dead_letter else "no alerts"
            whose = f" for uplink {uplink}" if uplink is not None else ""
            print(f"{what}{whose} in the store {config.store.path}", file=err)
    except BrokenPipeError:
        raise  # the reader went away (`| head`): the CLI ends quietly
    except (StoreError, sqlite3.Error, OSError) as exc:
        print(f"cannot read the store {config.store.path}: {exc}", file=err)
        return EXIT_NO_STORE
    return EXIT_OK
