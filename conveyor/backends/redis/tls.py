"""TLS for rediss:// and rediss+sentinel://: the SSL context built from the
URL's options (named as redis-py names them), and what a failed handshake
means in words a user can act on.

    ssl_ca_certs=/path/ca.pem      the CA bundle that signed the server's certificate
                                   (default: the system's CAs)
    ssl_certfile=/path/client.pem  a client certificate, for servers with
    ssl_keyfile=/path/client.key   `tls-auth-clients yes` (the key may be in the certfile)
    ssl_cert_reqs=required         none | optional | required: whether the server's
                                   certificate must verify
    ssl_check_hostname=true        true | false: whether it must name the host
                                   dialled (default: true unless ssl_cert_reqs=none)
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping

TLS_OPTIONS = frozenset(
    {"ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname"}
)

_CERT_REQS = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}
_BOOLEANS = {"true": True, "false": False}


def tls_context(options: Mapping[str, str], url: str) -> ssl.SSLContext:
    """The client context for `options` (a URL's query); ValueError, naming
    the URL, for a bad value or a file that cannot be loaded."""
    reqs_name = options.get("ssl_cert_reqs", "required").lower()
    if reqs_name not in _CERT_REQS:
        raise ValueError(
            f"ssl_cert_reqs in {url!r} must be none, optional or required, got {reqs_name!r}"
        )
    cert_reqs = _CERT_REQS[reqs_name]
    check_text = options.get("ssl_check_hostname")
    if check_text is None:
        check_hostname = cert_reqs != ssl.CERT_NONE
    elif check_text.lower() in _BOOLEANS:
        check_hostname = _BOOLEANS[check_text.lower()]
    else:
        raise ValueError(f"ssl_check_hostname in {url!r} must be true or false, got {check_text!r}")
    if check_hostname and cert_reqs == ssl.CERT_NONE:
        raise ValueError(
            f"ssl_check_hostname=true in {url!r} needs a certificate to check: "
            "ssl_cert_reqs=optional or required"
        )
    certfile, keyfile = options.get("ssl_certfile"), options.get("ssl_keyfile")
    if keyfile and not certfile:
        raise ValueError(f"ssl_keyfile in {url!r} needs ssl_certfile (the client certificate)")
    ca_certs = options.get("ssl_ca_certs")
    try:
        context = ssl.create_default_context(cafile=ca_certs or None)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot load ssl_ca_certs {ca_certs!r} from {url!r}: {exc}") from None
    context.check_hostname = check_hostname  # before verify_mode: CERT_NONE needs it off
    context.verify_mode = cert_reqs
    if certfile:
        try:
            context.load_cert_chain(certfile, keyfile or None)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(
                f"cannot load the client certificate ssl_certfile={certfile!r}"
                f"{f' ssl_keyfile={keyfile!r}' if keyfile else ''} from {url!r}: {exc}"
            ) from None
    return context


def explain_tls_failure(exc: BaseException) -> str | None:
    """What a TLS error means for the user, or None if it is not one we know."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            f"the server's certificate did not verify ({exc.verify_message or exc}): "
            "check ssl_ca_certs (the CA that signed it) and ssl_check_hostname"
        )
    text = str(exc)
    if "CERTIFICATE_REQUIRED" in text or "certificate required" in text:
        return (
            f"the server wants a client certificate ({text}): "
            "give ssl_certfile (and ssl_keyfile) in the URL"
        )
    if "UNKNOWN_CA" in text or "BAD_CERTIFICATE" in text or "CERTIFICATE_UNKNOWN" in text:
        return f"the server refused the client certificate ({text}): check ssl_certfile"
    return None


def closed_after_handshake(message: str, client_certificate: bool) -> str:
    """`message` (a connection closed by a TLS server right after the
    handshake), with what that likely means when it does not say already."""
    if client_certificate or "certificate" in message:
        return message
    return (
        f"{message} (the server closed the TLS connection right after the handshake: "
        "if it wants a client certificate (tls-auth-clients), give ssl_certfile "
        "and ssl_keyfile in the URL)"
    )
