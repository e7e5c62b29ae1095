"""HTTPS with --tls-cert/--tls-key, and client certificates with --tls-ca: certificates made here,
a real node subprocess, the unmodified tritonclient.http client and http.client."""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import ssl
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from conftest import PROBA_ATOL, Server, data, forest, publish

MODEL = "m"
X = data()[0][:4]


@pytest.fixture
def repo(local_repo: Path) -> Path:
    publish(local_repo, MODEL, forest())
    return local_repo


def live(server: Server) -> bool:
    return server.request("GET", "/v2/health/live")[0] == 200


def certificate(
    folder: Path, name: str, issuer: tuple[object, object] | None = None, ca: bool = False
) -> tuple[Path, Path, tuple[object, object]]:
    """A certificate for 127.0.0.1 and its key (PEM files), signed by `issuer` (cert, key) or itself."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    signer_cert, signer_key = issuer if issuer is not None else (None, key)
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(signer_cert.subject if signer_cert is not None else subject)  # type: ignore[attr-defined]
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(signer_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path, (cert, key)


def test_https_with_a_self_signed_certificate(
    serve: Callable[..., Server], repo: Path, tmp_path: Path
) -> None:
    cert, key, _ = certificate(tmp_path, "node")
    server = serve(
        repo, "--tls-cert", str(cert), "--tls-key", str(key), tls=ssl.create_default_context(cafile=cert)
    )
    # NOTE: verified: the certificate is its own authority and names 127.0.0.1
    client = httpclient.InferenceServerClient(server.url, ssl=True, ssl_options={"ca_certs": str(cert)})
    try:
        tensor = httpclient.InferInput("input__0", list(X.shape), "FP32")
        tensor.set_data_from_numpy(X)
        result = client.infer(MODEL, [tensor])
    finally:
        client.close()
    np.testing.assert_allclose(result.as_numpy("output__0"), forest().proba(X), atol=PROBA_ATOL)
    assert result.get_response()["parameters"]["deployment_id"].startswith(f"{MODEL}:1@")
    assert live(server)  # http.client over HTTPS too, verified against the certificate
    plain = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    with pytest.raises((OSError, http.client.HTTPException)):
        plain.request("GET", "/v2/health/live")
        plain.getresponse()
    plain.close()


def test_tls_ca_admits_only_clients_with_a_certificate_it_issued(
    serve: Callable[..., Server], repo: Path, tmp_path: Path
) -> None:
    ca, _, authority = certificate(tmp_path, "ca", ca=True)
    cert, key, _ = certificate(tmp_path, "node", authority)
    client_cert, client_key, _ = certificate(tmp_path, "client", authority)
    stranger_cert, stranger_key, _ = certificate(tmp_path, "stranger")
    trusted = ssl.create_default_context(cafile=ca)
    trusted.load_cert_chain(client_cert, client_key)
    server = serve(repo, *("--tls-cert", str(cert), "--tls-key", str(key), "--tls-ca", str(ca)), tls=trusted)
    assert live(server)
    for chain in (None, (stranger_cert, stranger_key)):
        context = ssl.create_default_context(cafile=ca)
        if chain is not None:
            context.load_cert_chain(*chain)
        conn = http.client.HTTPSConnection("127.0.0.1", server.port, timeout=10, context=context)
        with pytest.raises((OSError, http.client.HTTPException)):
            conn.request("GET", "/v2/health/live")
            conn.getresponse()
        conn.close()
    assert live(server)
