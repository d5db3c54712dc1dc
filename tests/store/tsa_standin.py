"""A stand-in RFC 3161 time-stamping authority on 127.0.0.1, for tests only.

A real HTTP server (``application/timestamp-query`` in, ``application/timestamp-reply`` out)
that answers each request with a TimeStampResp signed by a TSA certificate issued by its own
CA, the way a public TSA does (RFC 3161 sec. 2.4.2; the token is CMS SignedData over a
TSTInfo, with the ESS signing-certificate-v2 attribute of RFC 5816). rfc3161-client only
builds requests and reads responses, so the responses are built here with asn1crypto and
signed with `cryptography`.

`mode` makes it misbehave the ways a TSA or a network can: answer with an error status, a
server error, or a token over another imprint than the one asked for.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from asn1crypto import algos, cms, core, tsp
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

POLICY = "1.3.6.1.4.1.99999.1"  # a private-arc policy id: this TSA's only policy


@dataclass
class Authority:
    """A CA and the TSA certificate it issued (EC P-256: fast to make in every test)."""

    ca: x509.Certificate
    tsa: x509.Certificate
    tsa_key: ec.EllipticCurvePrivateKey = field(repr=False)

    def write_ca(self, path: Path) -> Path:
        path.write_bytes(self.ca.public_bytes(Encoding.PEM))
        return path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_authority(name: str = "Stand-in TSA") -> Authority:
    now = datetime.now(UTC) - timedelta(minutes=5)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name(f"{name} root CA"))
        .issuer_name(_name(f"{name} root CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    tsa_key = ec.generate_private_key(ec.SECP256R1())
    tsa = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca.subject)
        .public_key(tsa_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        )
        # RFC 3161 sec. 2.3: the TSA's certificate has exactly this purpose, marked critical
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return Authority(ca, tsa, tsa_key)


def _rejection(why: str) -> bytes:
    """A TimeStampResp with no token (asn1crypto's schema wants one, RFC 3161 does not)."""
    status = tsp.PKIStatusInfo({"status": "rejection", "status_string": [why]}).dump()
    return b"\x30" + bytes([len(status)]) + status  # DER SEQUENCE, short length


def time_stamp_response(
    authority: Authority, request_der: bytes, *, imprint: bytes | None = None
) -> bytes:
    """A granted TimeStampResp to `request_der`, over `imprint` instead when given."""
    request = tsp.TimeStampReq.load(request_der)
    message_imprint = request["message_imprint"]
    if imprint is not None:
        message_imprint = tsp.MessageImprint(
            {"hash_algorithm": message_imprint["hash_algorithm"], "hashed_message": imprint}
        )
    info = tsp.TSTInfo(
        {
            "version": "v1",
            "policy": POLICY,
            "message_imprint": message_imprint,
            "serial_number": secrets.randbits(64),
            "gen_time": datetime.now(UTC).replace(microsecond=0),
            "accuracy": {"seconds": 1},
            "nonce": request["nonce"].native,
        }
    )
    content = info.dump()
    tsa_der = authority.tsa.public_bytes(Encoding.DER)
    signed_attributes = cms.CMSAttributes(
        [
            {"type": "content_type", "values": ["tst_info"]},
            {"type": "signing_time", "values": [cms.Time({"utc_time": datetime.now(UTC)})]},
            {"type": "message_digest", "values": [hashlib.sha256(content).digest()]},
            {
                "type": "signing_certificate_v2",
                "values": [{"certs": [{"cert_hash": hashlib.sha256(tsa_der).digest()}]}],
            },
        ]
    )
    # CMS (RFC 5652 sec. 5.4): the signature is over the DER of the attributes as a SET OF
    signature = authority.tsa_key.sign(signed_attributes.dump(), ec.ECDSA(hashes.SHA256()))
    certificate = asn1_x509.Certificate.load(tsa_der)
    signer = cms.SignerInfo(
        {
            "version": "v1",
            "sid": cms.SignerIdentifier(
                {
                    "issuer_and_serial_number": {
                        "issuer": certificate.issuer,
                        "serial_number": certificate.serial_number,
                    }
                }
            ),
            "digest_algorithm": algos.DigestAlgorithm({"algorithm": "sha256"}),
            "signed_attrs": signed_attributes,
            "signature_algorithm": algos.SignedDigestAlgorithm({"algorithm": "sha256_ecdsa"}),
            "signature": signature,
        }
    )
    signed_data = cms.SignedData(
        {
            "version": "v3",
            "digest_algorithms": [algos.DigestAlgorithm({"algorithm": "sha256"})],
            "encap_content_info": {
                "content_type": "tst_info",
                "content": core.ParsableOctetString(content),
            },
            "certificates": [certificate] if request["cert_req"].native else [],
            "signer_infos": [signer],
        }
    )
    token = cms.ContentInfo({"content_type": "signed_data", "content": signed_data})
    return tsp.TimeStampResp({"status": {"status": "granted"}, "time_stamp_token": token}).dump()


@dataclass
class StandIn:
    """The running server: its URL, its authority, what it does next, what it was asked."""

    url: str
    authority: Authority
    mode: str = "grant"  # grant | reject | error | other-imprint
    requests: int = 0


def _handler(standin: StandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            standin.requests += 1
            if self.headers.get("Content-Type") != "application/timestamp-query":
                self.send_error(415)
                return
            if standin.mode == "error":
                self.send_error(500, "the stand-in TSA is down")
                return
            if standin.mode == "reject":
                answer = _rejection("policy not accepted")
            else:
                imprint = b"\0" * 32 if standin.mode == "other-imprint" else None
                answer = time_stamp_response(standin.authority, body, imprint=imprint)
            self.send_response(200)
            self.send_header("Content-Type", "application/timestamp-reply")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: object) -> None:  # quiet in test output
            pass

    return Handler


@contextmanager
def running_tsa(authority: Authority | None = None) -> Iterator[StandIn]:
    """Serve a stand-in TSA on 127.0.0.1 (a free port) for the duration of the block."""
    standin = StandIn("", authority or make_authority())
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(standin))
    standin.url = f"http://127.0.0.1:{server.server_address[1]}/tsa"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield standin
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
