"""TLS contexts for DICOM over TLS, per the PS3.15 Annex B.9 "BCP 195" secure transport
connection profile (RFC 9325 / BCP 195):

- TLS 1.2 at least; TLS 1.3 is negotiated whenever the peer has it (OpenSSL prefers the
  highest version both sides support);
- TLS 1.2 cipher suites: forward-secret key exchange (ECDHE, DHE) with AEAD ciphers only
  (AES-GCM, ChaCha20-Poly1305); no NULL, anonymous, export, RC4, 3DES, CBC or SHA-1 MAC
  suites. TLS 1.3 suites are all AEAD and are left at OpenSSL's defaults;
- no TLS compression (CRIME), no renegotiation;
- peers are authenticated with X.509 certificates: destinations always (against ``ca``
  or the system trust store, host name checked unless ``check_hostname: false``), the
  senders when the listener sets ``require_client_cert`` (mutual TLS, CERT_REQUIRED).
"""

from __future__ import annotations

import ssl

from router.config import ClientTLS, ServerTLS

#: OpenSSL cipher string for TLS 1.2 (TLS 1.3 suites are configured separately and
#: are all acceptable): ECDHE or DHE key exchange, AES-GCM or ChaCha20-Poly1305.
BCP195_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL:!DSS:!PSK"
MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


def _harden(ctx: ssl.SSLContext) -> ssl.SSLContext:
    ctx.minimum_version = MINIMUM_VERSION
    ctx.set_ciphers(BCP195_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return ctx


def server_context(cfg: ServerTLS) -> ssl.SSLContext:
    """The listener's context. With ``ca``, client certificates are verified against
    it: required when ``require_client_cert`` (mutual TLS), else checked if sent."""
    ctx = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_SINGLE_ECDH_USE | ssl.OP_SINGLE_DH_USE
    ctx.load_cert_chain(str(cfg.cert), str(cfg.key))
    if cfg.ca is not None:
        ctx.load_verify_locations(cafile=str(cfg.ca))
        ctx.verify_mode = ssl.CERT_REQUIRED if cfg.require_client_cert else ssl.CERT_OPTIONAL
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def client_context(cfg: ClientTLS) -> ssl.SSLContext:
    """A destination's context: the server certificate is always verified (against
    ``ca``, else the system trust store); ``cert``/``key`` are sent when asked."""
    ctx = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(cfg.ca) if cfg.ca is not None else None
    )
    _harden(ctx)
    ctx.check_hostname = cfg.check_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED
    if cfg.cert is not None and cfg.key is not None:
        ctx.load_cert_chain(str(cfg.cert), str(cfg.key))
    return ctx
