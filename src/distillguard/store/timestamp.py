"""RFC 3161 timestamps for checkpoints, from a time-stamping authority (TSA) the operator names.

A checkpoint's signature says who made it, not when: whoever holds the master secret can sign
a checkpoint with any `created_at`. A TSA's token binds a hash of the checkpoint's signed bytes
to the TSA's clock (genTime) under the TSA's own key, so a third party who trusts the TSA
learns that this head existed by then.

    request:  POST application/timestamp-query, SHA-256 imprint, a nonce, certReq (RFC 3161
              sec. 2.4.1, 3.4), with the standard library's HTTP client
    stored:   the TimeStampToken (CMS SignedData, DER) as base64, in the anchor beside the
              checkpoint it stamps (`store/checkpoint.py`)
    checked:  the token's imprint is the checkpoint's; given the TSA's CA certificate, its
              signature, its certificate chain and the timeStamping key purpose
              (rfc3161-client)

Asking a TSA may fail (unreachable, an error status, a token over something else): that
raises `ServiceUnavailableError` with one line, and the caller anchors the checkpoint without a
token. A TSA is a witness added to the checkpoint, never a condition for having one.
"""

from __future__ import annotations

import base64
import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from cryptography import x509
from rfc3161_client import (
    HashAlgorithm,
    PKIStatus,
    TimestampRequestBuilder,
    TimeStampResponse,
    VerificationError,
    VerifierBuilder,
    decode_timestamp_response,
)

from distillguard.errors import AuditChainError, ConfigError, ServiceUnavailableError
from distillguard.store.base import describe

__all__ = [
    "TSA_CERT_ENV",
    "TSA_ENV",
    "Timestamp",
    "TimestampAuthority",
    "TsaTrust",
    "check_timestamp",
    "load_tsa_trust",
    "request_timestamp",
    "timestamp_authority_from_env",
    "tsa_trust_from_env",
]

TSA_ENV = "DISTILLGUARD_ANCHOR_TSA"
TSA_CERT_ENV = "DISTILLGUARD_ANCHOR_TSA_CERT"
_QUERY = "application/timestamp-query"
_MAX_RESPONSE_BYTES = 1 << 20  # a token is a few kilobytes; refuse to buffer a flood
# hashAlgorithm OIDs an imprint may use (NIST CSOR) and how to recompute them
_IMPRINT_HASHES = {
    "2.16.840.1.101.3.4.2.1": hashlib.sha256,
    "2.16.840.1.101.3.4.2.2": hashlib.sha384,
    "2.16.840.1.101.3.4.2.3": hashlib.sha512,
}


@dataclass(frozen=True)
class TsaTrust:
    """The certificates a TSA's signature must chain to: self-signed roots, and the
    intermediates found beside them."""

    roots: tuple[x509.Certificate, ...]
    intermediates: tuple[x509.Certificate, ...] = ()


@dataclass(frozen=True)
class TimestampAuthority:
    """A TSA to ask, and (optionally) what its answers must chain to."""

    url: str
    trust: TsaTrust | None = None
    timeout: float = 10.0
    label: str = field(init=False, repr=False)  # the URL without its password, for messages

    def __post_init__(self) -> None:
        if urlsplit(self.url).scheme not in ("http", "https"):
            raise ConfigError(f"the TSA URL must be http:// or https://, not {self.url!r}")
        object.__setattr__(self, "label", describe(self.url))


@dataclass(frozen=True)
class Timestamp:
    """A checked token, and what it says."""

    token: str  # the TimeStampToken, DER, base64
    gen_time: str  # the TSA's clock when it signed, ISO 8601 UTC
    authority: str  # the signing certificate's subject ("" when the token carries none)
    signature_checked: bool  # False: only the imprint was checked (no TSA certificate given)


def load_tsa_trust(path: Path) -> TsaTrust:
    """The certificates in a PEM (one or more) or DER file: the TSA's CA, and intermediates."""
    try:
        data = path.read_bytes()
        if b"-----BEGIN" in data:
            certificates = x509.load_pem_x509_certificates(data)
        else:
            certificates = [x509.load_der_x509_certificate(data)]
    except OSError as exc:
        raise ConfigError(f"cannot read the TSA certificate file {path}: {exc.strerror}") from None
    except ValueError:
        raise ConfigError(f"{path}: not a PEM or DER certificate file") from None
    roots = tuple(cert for cert in certificates if cert.subject == cert.issuer)
    if not roots:
        raise ConfigError(
            f"{path}: no self-signed (root) certificate in it: give the TSA's CA certificate"
        )
    intermediates = tuple(cert for cert in certificates if cert.subject != cert.issuer)
    return TsaTrust(roots, intermediates)


def tsa_trust_from_env() -> TsaTrust | None:
    """The TSA certificates named by $DISTILLGUARD_ANCHOR_TSA_CERT, if it is set."""
    path = os.environ.get(TSA_CERT_ENV)
    return load_tsa_trust(Path(path)) if path else None


def timestamp_authority_from_env() -> TimestampAuthority | None:
    """The TSA named by $DISTILLGUARD_ANCHOR_TSA (and its certificates), if it is set."""
    url = os.environ.get(TSA_ENV)
    return TimestampAuthority(url, tsa_trust_from_env()) if url else None


def request_timestamp(authority: TimestampAuthority, message: bytes) -> Timestamp:
    """Ask `authority` to timestamp `message`.

    The answer is checked before it is kept: granted, our nonce, our imprint and, with
    `authority.trust`, a signature that chains to it. Any failure raises
    ServiceUnavailableError, in one line that names the TSA but not its password.
    """
    request = (
        TimestampRequestBuilder()
        .data(message)
        .hash_algorithm(HashAlgorithm.SHA256)
        .nonce(nonce=True)
        .cert_request(cert_request=True)
        .build()
    )
    body = _post(authority, request.as_bytes())
    try:
        response = decode_timestamp_response(body)
    except ValueError:
        raise _unavailable(authority, "answered with something not a TimeStampResp") from None
    if response.status not in (PKIStatus.GRANTED, PKIStatus.GRANTED_WITH_MODS):
        said = " ".join(" ".join(response.status_string).split())  # the TSA's words, one line
        raise _unavailable(authority, f"refused the request ({said or response.status})")
    try:
        nonce = response.tst_info.nonce
        token = base64.b64encode(response.time_stamp_token()).decode()
        stamp = _check(token, response, message, authority.trust)
    except ValueError:
        raise _unavailable(authority, "granted the request without a readable token") from None
    except AuditChainError as exc:
        raise _unavailable(authority, f"answered with a token that {exc}") from None
    if nonce != request.nonce:
        raise _unavailable(authority, "answered with another request's nonce")
    return stamp


def _post(authority: TimestampAuthority, query: bytes) -> bytes:
    url, headers = _split_credentials(authority.url)
    headers["Content-Type"] = _QUERY
    # the scheme is checked (http or https only) when the authority is made
    http_request = urllib.request.Request(url, data=query, headers=headers, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(http_request, timeout=authority.timeout) as answer:  # noqa: S310
            return bytes(answer.read(_MAX_RESPONSE_BYTES))
    except urllib.error.HTTPError as exc:
        raise _unavailable(authority, f"answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise _unavailable(authority, f"could not be reached ({reason})") from None


def _split_credentials(url: str) -> tuple[str, dict[str, str]]:
    """The URL without user:password, and the Basic authorization header they make (RFC 7617):
    a commercial TSA may want them, and urllib does not take them from the URL."""
    parts = urlsplit(url)
    if parts.username is None:
        return url, {}
    netloc = parts.hostname or ""
    if ":" in netloc:  # an IPv6 literal
        netloc = f"[{netloc}]"
    if parts.port is not None:
        netloc += f":{parts.port}"
    user, password = unquote(parts.username), unquote(parts.password or "")
    credentials = base64.b64encode(f"{user}:{password}".encode()).decode()
    return parts._replace(netloc=netloc).geturl(), {"Authorization": f"Basic {credentials}"}


def _unavailable(authority: TimestampAuthority, what: str) -> ServiceUnavailableError:
    return ServiceUnavailableError(f"the TSA at {authority.label} {what}")


def check_timestamp(token: str, message: bytes, trust: TsaTrust | None) -> Timestamp:
    """What the base64 `token` says about `message`; AuditChainError (its reason in words)
    when it is not a token, stamps something else, or (with `trust`) is not signed by a TSA
    that `trust` vouches for."""
    try:  # binascii.Error, from bad base64, is a ValueError too
        response = decode_timestamp_response(_as_response(base64.b64decode(token, validate=True)))
        return _check(token, response, message, trust)
    except ValueError:
        raise AuditChainError("is not an RFC 3161 timestamp token") from None


def _check(
    token: str, response: TimeStampResponse, message: bytes, trust: TsaTrust | None
) -> Timestamp:
    info = response.tst_info
    hash_function = _IMPRINT_HASHES.get(info.message_imprint.hash_algorithm.dotted_string)
    if hash_function is None:
        raise AuditChainError("uses an imprint hash this verifier does not know")
    if info.message_imprint.message != hash_function(message).digest():
        raise AuditChainError("stamps another message than this checkpoint (its imprint differs)")
    if trust is not None:
        builder = VerifierBuilder()
        for root in trust.roots:
            builder = builder.add_root_certificate(root)
        for intermediate in trust.intermediates:
            builder = builder.add_intermediate_certificate(intermediate)
        try:
            builder.build().verify_message(response, message)
        except VerificationError:
            raise AuditChainError(
                "is not signed by a TSA the given certificates vouch for"
            ) from None
    gen_time = info.gen_time.isoformat().replace("+00:00", "Z")
    return Timestamp(token, gen_time, _signer(response), trust is not None)


def _signer(response: TimeStampResponse) -> str:
    """The subject of the certificate that signed the token, if the token carries it."""
    signers = response.signed_data.signer_infos
    if len(signers) != 1:
        return ""
    signer = next(iter(signers))
    for der in response.signed_data.certificates:
        certificate = x509.load_der_x509_certificate(der)
        if (certificate.issuer, certificate.serial_number) == (signer.issuer, signer.serial_number):
            return certificate.subject.rfc4514_string()
    return ""


# TimeStampResp ::= SEQUENCE { status PKIStatusInfo, timeStampToken OPTIONAL } (RFC 3161 sec.
# 2.4.2): the anchor keeps only the token; rfc3161-client reads responses, so a granted status
# goes back in front of it (DER, X.690 sec. 8.1.3 for the length).
_GRANTED = bytes.fromhex("3003020100")


def _as_response(token: bytes) -> bytes:
    content = _GRANTED + token
    size = len(content)
    if size < 0x80:
        length = bytes([size])
    else:
        digits = size.to_bytes((size.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(digits)]) + digits
    return b"\x30" + length + content
