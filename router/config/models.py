"""The typed, frozen configuration models, with their defaults and bounds in one place.

Models are pydantic v2 (frozen, ``extra="forbid"``): declarative defaults and bounds,
precise error locations (``loc``) that loading maps back to YAML lines, and cheap
immutability for hot reload. Durations are seconds as ``float``; sizes are bytes as
``int``. Relative paths (``storage.path``, TLS files) are resolved against the
``base_dir`` given in the validation context (the config file's directory).
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from router.config.fields import (
    AETitle,
    DestinationName,
    Duration,
    ExistingFile,
    Host,
    ListenPort,
    Network,
    NodeId,
    Port,
    RelPath,
    SecretFile,
    Size,
    TransferSyntax,
    Url,
    custom,
    host_node_id,
    lower,
)
from router.config.profiles import DestinationProfile, ProfileName, ProfileRef, unknown_profile
from router.config.units import GiB, KiB, MiB
from router.holds import Hold, HoldUntil
from router.rules.engine import RuleEngine

__all__ = [
    "Accept",
    "CircuitBreaker",
    "ClientTLS",
    "Config",
    "Destination",
    "DicomWeb",
    "DicomWebAuth",
    "HoldConfig",
    "Http",
    "Listen",
    "Logging",
    "QueueSettings",
    "Retry",
    "ServerTLS",
    "Storage",
    "Transcode",
]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ServerTLS(_Model):
    """TLS on the listening side (DICOM over TLS, e.g. port 2762)."""

    cert: ExistingFile
    key: ExistingFile
    ca: ExistingFile | None = None  # verifies client certificates
    require_client_cert: bool = False

    @model_validator(mode="after")
    def _ca_for_clients(self) -> ServerTLS:
        if self.require_client_cert and self.ca is None:
            raise custom("tls", "require_client_cert: true needs 'ca' (the CA of client certs)")
        return self


class ClientTLS(_Model):
    """TLS towards a destination. No ``ca``: the system's trust store."""

    ca: ExistingFile | None = None
    cert: ExistingFile | None = None  # client certificate, if the peer asks for one
    key: ExistingFile | None = None
    check_hostname: bool = True

    @model_validator(mode="after")
    def _pair(self) -> ClientTLS:
        if (self.cert is None) != (self.key is None):
            raise custom("tls", "'cert' and 'key' go together: give both or neither")
        return self


class Listen(_Model):
    """The C-STORE SCP: where senders connect."""

    host: Host = "0.0.0.0"
    port: ListenPort = 11112
    max_associations: int = Field(default=32, ge=1, le=10_000)
    # The largest P-DATA PDU we accept (we advertise it). Bounded: memory per association.
    max_pdu_length: Size = Field(default=1 * MiB, ge=4096, le=64 * MiB)
    acse_timeout: Duration = 30.0  # association negotiation
    network_timeout: Duration = 60.0  # idle association is closed after this
    dimse_timeout: Duration = 60.0  # waiting for the rest of a DIMSE message
    tls_handshake_timeout: Duration = 10.0
    tls: ServerTLS | None = None


class Storage(_Model):
    """Spool files and the queue database."""

    path: RelPath
    # Below this much free space, new instances are refused with A700 (out of resources).
    min_free_bytes: Size = 1 * GiB
    # Data sets up to this size are stored inside the queue database (one sync on ack).
    inline_max_bytes: Size = Field(default=256 * KiB, ge=0, le=64 * MiB)
    # How long spool files stay after every delivery ended; 0: removed at once.
    retention: Duration = 0.0
    # Queue bound: above this many instances, new C-STOREs are refused with A700.
    max_queue_instances: int = Field(default=1_000_000, ge=1)


class QueueSettings(_Model):
    """Where the queue lives: embedded SQLite in ``storage.path`` (one router), or a
    PostgreSQL database shared by several nodes (docs/cluster.md)."""

    backend: Annotated[Literal["sqlite", "postgresql"], BeforeValidator(lower)] = "sqlite"
    dsn: str | None = None  # libpq conninfo or postgresql:// URL
    dsn_file: ExistingFile | None = None  # a file holding the DSN (keeps a password out)
    # Deliveries leased by a node silent this long go to the other nodes (database clock).
    lease: Duration = 60.0

    @model_validator(mode="after")
    def _where(self) -> QueueSettings:
        given = [k for k in ("dsn", "dsn_file") if getattr(self, k) is not None]
        if self.backend == "sqlite" and given:
            raise custom(
                "queue",
                f"'{given[0]}' is only for backend postgresql (the sqlite queue lives in "
                "storage.path): remove it or set backend: postgresql",
            )
        if self.backend == "postgresql":
            if not given:
                raise custom(
                    "queue",
                    "backend postgresql needs 'dsn' or 'dsn_file' (e.g. "
                    "dsn_file: /etc/dicom-router/pg.dsn)",
                )
            if len(given) == 2:
                raise custom("queue", "give 'dsn' or 'dsn_file', not both")
            if self.dsn is not None and not self.dsn.strip():
                raise custom("queue", "dsn is empty: e.g. postgresql://router@db:5432/dicom_router")
        return self

    @field_validator("lease")
    @classmethod
    def _lease_range(cls, value: float) -> float:
        if not 1.0 <= value <= 3600.0:
            raise custom("lease", f"{value:g}s is out of range: 1s to 1h (e.g. lease: 60s)")
        return value

    def conninfo(self) -> str:
        """The DSN: ``dsn``, or the first non-empty line of ``dsn_file`` (read now).
        Raises ValueError with a readable message when there is none."""
        if self.dsn is not None:
            return self.dsn.strip()
        if self.dsn_file is None:
            raise ValueError("queue: no dsn or dsn_file (backend sqlite)")
        try:
            text = self.dsn_file.read_text(encoding="utf-8")
        except OSError as e:
            raise ValueError(f"queue.dsn_file: cannot read {self.dsn_file}: {e}") from None
        for line in text.splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                return line.strip()
        raise ValueError(f"queue.dsn_file: {self.dsn_file} holds no DSN")


class Http(_Model):
    """GET /metrics, /healthz, /readyz."""

    enabled: bool = True
    host: Host = "127.0.0.1"
    port: ListenPort = 9108


class Accept(_Model):
    """Who may send to us."""

    calling_ae_titles: tuple[AETitle, ...] = ()  # empty: any calling AE
    check_called_ae: bool = True  # the called AE must be our ae_title
    accept_unknown_sop_classes: bool = True  # store any storage SOP class offered
    # Per calling AE title, the networks it may connect from ("*": every AE title not
    # listed). A calling AE from elsewhere is rejected like an unknown one (1,1,3).
    hosts: dict[AETitle, tuple[Network, ...]] = Field(default_factory=dict)

    @property
    def calling_ae_set(self) -> frozenset[str] | None:
        """The allowed calling AE titles, or None for any (AcceptorConfig's form)."""
        return frozenset(self.calling_ae_titles) or None

    def host_allowed(self, calling_ae: str, host: str) -> bool:
        """Whether ``calling_ae`` may connect from ``host`` (an IP address)."""
        nets = self.hosts.get(calling_ae.strip())
        if nets is None:
            nets = self.hosts.get("*")
        if nets is None:
            return True
        try:
            addr = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in ipaddress.ip_network(n) for n in nets)


class Retry(_Model):
    """Delivery retries: exponential backoff with jitter, then dead letter."""

    max_attempts: int = Field(default=20, ge=1)
    initial_backoff: Duration = 2.0
    max_backoff: Duration = 600.0
    multiplier: float = Field(default=2.0, ge=1.0, le=100.0)
    jitter: float = Field(default=0.2, ge=0.0, le=1.0)  # +/- this fraction of each delay

    @model_validator(mode="after")
    def _order(self) -> Retry:
        if self.max_backoff < self.initial_backoff:
            raise custom(
                "retry",
                f"max_backoff ({self.max_backoff:g}s) is below initial_backoff "
                f"({self.initial_backoff:g}s): raise max_backoff",
            )
        return self


class CircuitBreaker(_Model):
    """After ``failures`` consecutive connection failures, stop trying except for one
    probe every ``probe_interval``."""

    failures: int = Field(default=5, ge=1)
    probe_interval: Duration = 30.0


class HoldConfig(_Model):
    """``hold: {until, quiet, max_wait}``: wait until a series (or study) is complete
    before sending any of it (the timing is :mod:`router.holds`; README "Holds")."""

    until: Annotated[Literal["series_complete", "study_complete"], BeforeValidator(lower)]
    quiet: Duration = 30.0  # no new instance of the group for this long: it is complete
    max_wait: Duration = 3600.0  # never hold a group longer than this after its first

    @model_validator(mode="after")
    def _bounds(self) -> HoldConfig:
        if self.quiet <= 0:
            raise custom("hold", "quiet must be more than 0 (e.g. quiet: 30s)")
        if self.max_wait <= 0:
            raise custom("hold", "max_wait must be more than 0 (e.g. max_wait: 1h)")
        if self.max_wait < self.quiet:
            raise custom(
                "hold",
                f"max_wait ({self.max_wait:g}s) is shorter than quiet ({self.quiet:g}s): "
                "every group would be released by max_wait; make max_wait at least quiet",
            )
        return self

    @property
    def policy(self) -> Hold:
        """The pure policy the queue applies."""
        return Hold(HoldUntil(self.until), self.quiet, self.max_wait)


class DicomWebAuth(_Model):
    """How a DICOMweb destination knows us: a bearer token, or a user name and password.
    Secrets live in files (first line), re-read when they change."""

    bearer_token_file: SecretFile | None = None
    username: str | None = None
    password_file: SecretFile | None = None

    @model_validator(mode="after")
    def _one_form(self) -> DicomWebAuth:
        basic = self.username is not None or self.password_file is not None
        if self.bearer_token_file is not None and basic:
            raise custom(
                "auth",
                "give either bearer_token_file or username and password_file, not both",
            )
        if self.bearer_token_file is None and not basic:
            raise custom(
                "auth",
                "empty auth: give bearer_token_file, or username and password_file",
            )
        if basic and (self.username is None or self.password_file is None):
            raise custom("auth", "'username' and 'password_file' go together: give both")
        return self


class DicomWeb(_Model):
    """A DICOMweb (STOW-RS) destination: ``POST {url}/studies``."""

    url: Url
    auth: DicomWebAuth | None = None
    tls: ClientTLS | None = None  # for an https:// url; no ``ca``: the system's trust store
    timeout: Duration = Field(default=120.0, gt=0)  # per connect, write and read of a request
    max_instances_per_request: int = Field(default=16, ge=1, le=1000)  # of one study

    @model_validator(mode="after")
    def _tls_needs_https(self) -> DicomWeb:
        if self.tls is not None and not self.url.startswith("https:"):
            raise custom(
                "tls", f"tls is set but the url is not https: use https://{_rest(self.url)}"
            )
        return self


def _rest(url: str) -> str:
    return url.split("://", 1)[-1]


# Settings of the DIMSE kind only; a DICOMweb destination that sets one is refused.
_DIMSE_ONLY = (
    "calling_ae_title",
    "max_pdu_length",
    "connect_timeout",
    "acse_timeout",
    "dimse_timeout",
    "network_timeout",
    "tls",
)


def _missing(name: str) -> PydanticCustomError:
    """A required field of the DIMSE kind absent: reported like pydantic's own
    ``missing`` (config loading adds the field to the location)."""
    return PydanticCustomError("missing_field", "Field required", {"field": name})


class Destination(_Model):
    """A destination we forward to: a C-STORE SCP (``ae_title``, ``host``, ``port``) or
    a DICOMweb server (``dicomweb``); the rest is the same for both kinds."""

    ae_title: AETitle | None = None
    host: Host | None = None
    port: Port | None = None
    dicomweb: DicomWeb | None = None
    max_associations: int = Field(default=1, ge=1, le=64)
    batch_size: int = Field(default=32, ge=1, le=10_000)  # instances leased per worker round
    calling_ae_title: AETitle | None = None  # None only before loading: then our ae_title
    max_pdu_length: Size = Field(default=1 * MiB, ge=4096, le=64 * MiB)  # the largest we receive
    connect_timeout: Duration = 10.0
    acse_timeout: Duration = 30.0
    dimse_timeout: Duration = 120.0  # a PACS may take long to commit a large instance
    network_timeout: Duration = 60.0
    retry: Retry = Retry()
    circuit_breaker: CircuitBreaker = CircuitBreaker()
    profile: ProfileRef | None = None  # an entry of profiles: for the copies sent here
    tls: ClientTLS | None = None
    # Convert to this lossless syntax whenever the destination accepts it (else the
    # original is sent when accepted, else the first lossless syntax it accepts).
    transcode_to: TransferSyntax | None = None
    # Send nothing of a series (study) until it is complete: see HoldConfig.
    hold: HoldConfig | None = None
    # An association that has caught up stays open this long for the next instance
    # before it is released; keep it below the destination's own idle timeout.
    idle_release: Duration = 5.0

    @model_validator(mode="after")
    def _one_kind(self) -> Destination:
        dimse = [f for f in ("ae_title", "host", "port") if getattr(self, f) is not None]
        if self.dicomweb is not None:
            if dimse:
                raise custom(
                    "kind",
                    f"both {', '.join(dimse)} (DIMSE C-STORE) and dicomweb (STOW-RS): a "
                    "destination is one kind; remove one (or make two destinations)",
                )
            extra = [f for f in _DIMSE_ONLY if f in self.model_fields_set]
            if extra:
                hint = " (TLS for dicomweb goes under dicomweb.tls)" if "tls" in extra else ""
                raise custom(
                    "kind",
                    f"{', '.join(extra)}: only for DIMSE destinations, not dicomweb; "
                    f"remove it{hint}",
                )
            return self
        if not dimse:
            raise custom(
                "kind",
                "no kind: give ae_title, host and port (DIMSE C-STORE) or a dicomweb "
                "section with its url (STOW-RS)",
            )
        for name in ("ae_title", "host", "port"):
            if getattr(self, name) is None:
                raise _missing(name)
        return self

    @property
    def is_dicomweb(self) -> bool:
        return self.dicomweb is not None

    @property
    def address(self) -> str:
        """Where it is, for people: ``AE@host:port`` or the DICOMweb url."""
        if self.dicomweb is not None:
            return self.dicomweb.url
        return f"{self.ae_title}@{self.host}:{self.port}"

    @model_validator(mode="after")
    def _idle_below_network_timeout(self) -> Destination:
        if self.dicomweb is None and self.idle_release >= self.network_timeout:
            raise custom(
                "idle_release",
                f"idle_release ({self.idle_release:g}s) is not below network_timeout "
                f"({self.network_timeout:g}s): an idle association would time out first; "
                "lower idle_release",
            )
        return self


class Transcode(_Model):
    """Converting instances for destinations that do not accept the received syntax."""

    # An instance whose decoded pixel data would exceed this is not converted (dead
    # letter with the reason): bounds the memory a conversion may take.
    max_decoded_bytes: Size = Field(default=512 * MiB, ge=1 * MiB)
    max_concurrent: int = Field(default=1, ge=1, le=16)  # conversions at once (CPU-heavy)


class Logging(_Model):
    format: Annotated[Literal["json", "logfmt", "human"], BeforeValidator(lower)] = "logfmt"
    level: Annotated[Literal["debug", "info", "warning", "error"], BeforeValidator(lower)] = "info"


class Config(_Model):
    """The whole router configuration. Immutable; a reload builds a new one."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    ae_title: AETitle
    # names this node in leases and logs; unique per node of a cluster
    node_id: NodeId = Field(default_factory=host_node_id)
    listen: Listen = Listen()
    storage: Storage
    queue: QueueSettings = QueueSettings()
    http: Http = Http()
    accept: Accept = Accept()
    destinations: dict[DestinationName, Destination] = Field(default_factory=dict)
    profiles: dict[ProfileName, DestinationProfile] = Field(default_factory=dict)
    rules: RuleEngine = Field(default_factory=RuleEngine, exclude=True)
    logging: Logging = Logging()
    transcode: Transcode = Transcode()
    # forward_each: every received instance is forwarded, even a repeat of one already
    # queued; drop_identical: a byte-identical repeat (same SOP Instance UID, same bytes)
    # still queued for a destination is acknowledged but not queued again.
    duplicates: Annotated[Literal["forward_each", "drop_identical"], BeforeValidator(lower)] = (
        "forward_each"
    )
    # SIGTERM/SIGINT: how long in-flight associations may go on before they are aborted
    # (and workers may finish their current send); the process exits within about this.
    shutdown_grace: Duration = 30.0

    @model_validator(mode="after")
    def _defaults_and_cross_checks(self) -> Config:
        fixed = {
            name: d.model_copy(update={"calling_ae_title": self.ae_title})
            for name, d in self.destinations.items()
            if d.calling_ae_title is None
        }
        if fixed:
            object.__setattr__(self, "destinations", {**self.destinations, **fixed})
        for d in self.destinations.values():
            if d.profile is not None and d.profile not in self.profiles:
                raise custom("profile", unknown_profile(d.profile, list(self.profiles)))
        if (
            self.http.enabled
            and self.http.port != 0
            and self.http.port == self.listen.port
            and (
                self.http.host == self.listen.host
                or "0.0.0.0" in (self.http.host, self.listen.host)
            )
        ):
            raise custom("ports", "http.port is the same as listen.port: pick another port")
        return self

    def destination(self, name: str) -> Destination:
        return self.destinations[name]

    @property
    def holds(self) -> dict[str, Hold]:
        """The hold policy of every destination that has one (what the queue applies)."""
        return {n: d.hold.policy for n, d in self.destinations.items() if d.hold is not None}
