"""TLS contexts for DICOM over TLS (PS3.15 BCP 195 profile: TLS 1.2 or newer)."""

from __future__ import annotations

import ssl

from router.config import ClientTLS, ServerTLS


def server_context(cfg: ServerTLS) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cfg.cert), str(cfg.key))
    if cfg.ca is not None:
        ctx.load_verify_locations(cafile=str(cfg.ca))
        ctx.verify_mode = ssl.CERT_REQUIRED if cfg.require_client_cert else ssl.CERT_OPTIONAL
    return ctx


def client_context(cfg: ClientTLS) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cfg.ca) if cfg.ca is not None else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = cfg.check_hostname
    if cfg.cert is not None and cfg.key is not None:
        ctx.load_cert_chain(str(cfg.cert), str(cfg.key))
    return ctx
