"""What leaves the gateway: the uplinks (HTTP, MQTT 5, CMMS work orders) and the optional
feature summaries.

Models as in agent.config._models (frozen, unknown keys refused); the address hygiene
rules live in agent.config._urls.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Self
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, ValidationInfo, field_validator, model_validator

from agent.config._base import Id, _Model
from agent.config._cmms import CmmsMapping
from agent.config._hosts import Host
from agent.config._urls import is_loopback, public_url, url_problem


class _Delivery(_Model):
    """Delivery settings every uplink shares."""

    batch_size: int = Field(default=100, ge=1, le=10_000)
    timeout_s: float = Field(default=10.0, gt=0, le=300)
    max_backoff_s: float = Field(default=30.0, gt=0, le=3600)
    # While the far end does not answer, a cheap check (HTTP HEAD, TCP connect) this often;
    # delivery resumes as soon as it answers.
    probe_interval_s: float = Field(default=1.0, ge=0.1, le=60)


class _HttpEndpoint(_Delivery):
    """An HTTPS endpoint with an optional bearer token (the http and cmms uplinks)."""

    url: Annotated[str, Field(pattern=r"^https?://")]
    token: str | None = None  # may be "${ENV_VAR}", expanded at load
    token_file: Path | None = None
    allow_insecure_http: bool = False
    # TLS of an https:// url: the CA certificate(s) to trust instead of the system's (a
    # private or plant CA), and a client certificate when the far end asks for one.
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _https_only(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        url = info.data.get("url")  # declared before, so validated already (when valid)
        if v is not None and isinstance(url, str) and not url.lower().startswith("https://"):
            raise ValueError(
                f"{info.field_name} is for TLS, but url {public_url(url)!r} is plain "
                f"http:// (no TLS, the file would be ignored); use an https:// url, or "
                f"remove {info.field_name}"
            )
        return v

    @model_validator(mode="after")
    def _endpoint(self) -> Self:
        if self.token is not None and self.token_file is not None:
            raise ValueError("give token or token_file, not both")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("give cert_file and key_file together (a client certificate)")
        problem = url_problem(self.url, allow_insecure_http=self.allow_insecure_http)
        if problem:
            raise ValueError(problem)
        return self


class HttpUplink(_HttpEndpoint):
    # Where feature summaries go; None: url with its last path segment set to "summaries",
    # its query (a function key: ?code=...) kept.
    summaries_url: Annotated[str, Field(pattern=r"^https?://")] | None = None
    # Where the backend answers a GET for one alert it holds, "{id}" standing for the
    # alert_id (https://b/v1/alerts/{id}): a 409 Conflict that does not name the alert's
    # id is taken for "it has it" only when this GET answers 2xx with the record as JSON
    # (its alert_id and one more field as sent: agent.uplink._http).
    duplicate_check_url: Annotated[str, Field(pattern=r"^https?://")] | None = None

    @field_validator("summaries_url", "duplicate_check_url")
    @classmethod
    def _extra_url(cls, v: str | None, info: ValidationInfo) -> str | None:
        # A field validator, not a model one: check reports a problem at this key's line,
        # not at url's (allow_insecure_http is declared before, so validated already).
        if v is None:
            return v
        if info.field_name == "duplicate_check_url":
            rest = v.replace("{id}", "")
            if "{id}" not in v or "{" in rest or "}" in rest:
                raise ValueError(
                    "a duplicate_check_url must hold {id} (where the alert_id goes) and no "
                    "other {...} placeholder, e.g. https://backend.example/v1/alerts/{id}"
                )
        insecure = bool(info.data.get("allow_insecure_http"))
        problem = url_problem(v.replace("{id}", "ID"), allow_insecure_http=insecure)
        if problem:
            raise ValueError(problem)
        return v

    def summaries_endpoint(self) -> str:
        """The URL feature summaries are POSTed to: summaries_url, else url with its last
        path segment replaced by "summaries" (https://b/v1/alerts?code=K ->
        https://b/v1/summaries?code=K). The query stays: a key there (an Azure function's
        ?code=) is what the backend checks, and without it every summary is refused."""
        if self.summaries_url:
            return self.summaries_url
        parts = urlsplit(self.url)
        head = parts.path.rstrip("/").rpartition("/")[0]
        return urlunsplit(parts._replace(path=f"{head}/summaries", fragment=""))


class CmmsUplink(_HttpEndpoint):
    """Work-order requests for raised and escalated alerts (agent.uplink._cmms).

    The due date is the detection time plus the lower bound of the time to failure minus
    `safety_margin_hours`; without an estimate, plus `due_without_estimate_hours` (default:
    the asset's planning horizon) minus the margin; never before the detection, and at the
    detection in zone D.
    """

    batch_size: int = Field(default=20, ge=1, le=1000)  # alerts per round, one POST each
    safety_margin_hours: float = Field(default=24.0, ge=0, le=87_600)
    due_without_estimate_hours: float | None = Field(default=None, gt=0, le=87_600)
    mapping: CmmsMapping = CmmsMapping()
    # Where an update of an open work order goes: a template whose {id} is the work
    # order's id (URL-quoted), e.g. https://cmms/api/workorders/{id}/update?code=K; None:
    # {url}/{id}.
    update_url: Annotated[str, Field(pattern=r"^https?://")] | None = None

    @field_validator("update_url")
    @classmethod
    def _update_template(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None:
            return v
        rest = v.replace("{id}", "")
        if "{id}" not in v or "{" in rest or "}" in rest:
            raise ValueError(
                "an update_url must hold {id} (where the work order's id goes) and no "
                "other {...} placeholder"
            )
        parts = urlsplit(v)
        if "{id}" in parts.netloc or "{id}" in parts.fragment:
            raise ValueError(
                "{id} must be in the path or the query (after the host): in the host, the "
                "work order's id the CMMS answers with would choose the server the token is "
                "sent to; in the fragment, it is never sent"
            )
        insecure = bool(info.data.get("allow_insecure_http"))
        problem = url_problem(v.replace("{id}", "WO-1"), allow_insecure_http=insecure)
        if problem:
            raise ValueError(problem)
        return v

    def update_endpoint(self, quoted_id: str) -> str:
        """The URL an update of work order `quoted_id` (already URL-quoted) goes to."""
        if self.update_url:
            return self.update_url.replace("{id}", quoted_id)
        return f"{self.url.rstrip('/')}/{quoted_id}"


class MqttTls(_Model):
    """TLS to the broker; every file optional (default: the system's CA certificates)."""

    ca_file: Path | None = None
    cert_file: Path | None = None  # client certificate, when the broker wants one
    key_file: Path | None = None

    @model_validator(mode="after")
    def _pair(self) -> MqttTls:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("give cert_file and key_file together (a client certificate)")
        return self


class MqttUplink(_Delivery):
    host: Host
    port: int = Field(default=8883, ge=1, le=65535)
    tls: MqttTls | None = MqttTls()  # null: plain MQTT
    allow_insecure_mqtt: bool = False
    username: str | None = None
    password: str | None = None  # may be "${ENV_VAR}", expanded at load
    password_file: Path | None = None
    client_id: str | None = Field(default=None, min_length=1, max_length=64)
    # {gateway}: the gateway id; {kind}: the alert's kind, or "summary".
    topic: str = "edge-agent/{gateway}/{kind}"
    session_expiry_s: int = Field(default=86_400, ge=0, le=2**32 - 1)
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    batch_size: int = Field(default=50, ge=1, le=1000)
    # A PUBACK 0x10 "No matching subscribers" is a success code, but mosquitto and HiveMQ
    # send it when they discarded the message: counting it delivered loses the alert.
    require_subscriber: bool = Field(
        default=True,
        description=(
            "true: a PUBACK 0x10 'No matching subscribers' (the broker dropped the message: "
            "no client subscribes to its topic) is not a delivery; the item stays pending "
            "and is retried. false: it counts as delivered, for a broker that hands "
            "messages on without a subscriber (a Kafka bridge, a rules engine)."
        ),
    )

    @model_validator(mode="after")
    def _checks(self) -> MqttUplink:
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        if self.tls is None and not is_loopback(self.host) and not self.allow_insecure_mqtt:
            raise ValueError(
                f"tls: null sends the alerts (and any password) to {self.host} in clear "
                "text; give tls: {} (or a ca_file), or set allow_insecure_mqtt: true if this "
                "network is trusted"
            )
        problem = topic_problem(self.topic)
        if problem:
            raise ValueError(problem)
        return self


TOPIC_FIELDS = ("gateway", "kind")


def topic_problem(template: str) -> str | None:
    """What is wrong with an MQTT topic template, or None."""
    try:
        sample = template.format(**{k: "x" for k in TOPIC_FIELDS})
    except (KeyError, IndexError, ValueError) as exc:
        return f"topic {template!r} has an unknown placeholder ({exc}); use " + ", ".join(
            "{" + k + "}" for k in TOPIC_FIELDS
        )
    if not sample or "+" in sample or "#" in sample or "\0" in sample or len(sample) > 1024:
        return f"topic {template!r} must be a plain topic name (no + or # wildcards)"
    return None


UPLINK_KINDS = ("http", "mqtt", "cmms")


class Uplink(_Model):
    """One destination: exactly one of http, mqtt or cmms."""

    # Default: its kind, when no other uplink has that kind (several of a kind must each be
    # named: the store keeps delivery state by name, and a name taken from the uplink's
    # position would move to another backend when an uplink is removed or inserted).
    name: Id | None = None
    http: HttpUplink | None = None
    mqtt: MqttUplink | None = None
    cmms: CmmsUplink | None = None

    @model_validator(mode="after")
    def _one(self) -> Uplink:
        if sum(getattr(self, k) is not None for k in UPLINK_KINDS) != 1:
            raise ValueError("give exactly one of http, mqtt or cmms in each uplink")
        return self

    @property
    def kind(self) -> str:
        """http, mqtt or cmms."""
        return next(k for k in UPLINK_KINDS if getattr(self, k) is not None)

    @property
    def settings(self) -> HttpUplink | MqttUplink | CmmsUplink:
        """The one block given (its delivery settings and endpoint)."""
        block: HttpUplink | MqttUplink | CmmsUplink = getattr(self, self.kind)
        return block


MAX_UPLINKS = 8


class Summaries(_Model):
    """Periodic feature summaries (optional telemetry between alerts)."""

    interval_s: float = Field(default=300.0, ge=1, le=86_400)
    sensors: tuple[Id, ...] | None = None  # default: every sensor


def uplink_names(uplinks: tuple[Uplink, ...]) -> tuple[str, ...]:
    """Names of uplinks (see Config.uplink_names).

    Raises:
        ValueError: an unnamed uplink shares its kind with another (the loader refuses
            such a file; see agent.config._crossref).
    """
    kinds = [u.kind for u in uplinks]
    for u in uplinks:
        if u.name is None and kinds.count(u.kind) > 1:
            raise ValueError(f"several {u.kind} uplinks: each needs a name")
    return tuple(u.name or u.kind for u in uplinks)
