"""rediss:// TLS options (issue 8, point 8): ssl_ca_certs, ssl_certfile,
ssl_keyfile, ssl_cert_reqs and ssl_check_hostname, against a redis-server
this test starts with a TLS port that wants client certificates, with a CA,
server and client certificates made here with the openssl command."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from availability import free_port

from conveyor import BackendUnavailableError, Conveyor, InvalidOptionError, JobState

pytestmark = pytest.mark.redis


def _openssl(folder: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=30)


def _ec_key_and_request(folder: Path, name: str, subject: str) -> None:
    _openssl(
        folder,
        *("req", "-new", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
        *("-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject),
    )


def _ca(folder: Path, name: str) -> None:
    _openssl(
        folder,
        *("req", "-x509", "-new", "-nodes", "-newkey", "ec"),
        *("-pkeyopt", "ec_paramgen_curve:prime256v1", "-days", "2"),
        *("-keyout", f"{name}.key", "-out", f"{name}.crt", "-subj", f"/CN={name}"),
    )


def _signed(folder: Path, name: str, ca: str, extensions: str) -> None:
    (folder / f"{name}.ext").write_text(extensions)
    _openssl(
        folder,
        *("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key"),
        *("-CAcreateserial", "-days", "2", "-out", f"{name}.crt", "-extfile", f"{name}.ext"),
    )


@dataclass
class TLSServer:
    port: int
    folder: Path

    def url(self, host: str = "127.0.0.1", **options: str) -> str:
        query = "&".join(f"{k}={quote(v)}" for k, v in options.items())
        return f"rediss://{host}:{self.port}/0?{query}"

    def file(self, name: str) -> str:
        return str(self.folder / name)


def _answers(server: TLSServer) -> bool:
    context = ssl.create_default_context(cafile=server.file("ca.crt"))
    context.load_cert_chain(server.file("client.crt"), server.file("client.key"))
    try:
        with (
            socket.create_connection(("127.0.0.1", server.port), timeout=1) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
        ):
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSServer]:
    """redis-server on a TLS port only, with --tls-auth-clients yes. Files:
    ca.crt (signed the server's and the client's), other-ca.crt (signed
    nothing here), server.crt (for IP 127.0.0.1), client.crt/.key."""
    binary, openssl = shutil.which("redis-server"), shutil.which("openssl")
    if binary is None or openssl is None:
        pytest.skip("needs redis-server and openssl on PATH")
    folder = tmp_path_factory.mktemp("tls")
    _ca(folder, "ca")
    _ca(folder, "other-ca")
    _ec_key_and_request(folder, "server", "/CN=redis test server")
    _signed(folder, "server", "ca", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    _ec_key_and_request(folder, "client", "/CN=conveyor test client")
    _signed(folder, "client", "ca", "extendedKeyUsage=clientAuth\n")
    server = TLSServer(free_port(), folder)
    with (folder / "redis.log").open("wb") as log:  # the server keeps its own copy
        process = subprocess.Popen(
            [
                *(binary, "--port", "0", "--tls-port", str(server.port), "--bind", "127.0.0.1"),
                *("--tls-cert-file", server.file("server.crt")),
                *("--tls-key-file", server.file("server.key")),
                *("--tls-ca-cert-file", server.file("ca.crt")),
                *("--tls-auth-clients", "yes", "--save", "", "--dir", str(folder)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        deadline = time.monotonic() + 10
        while not _answers(server):
            if process.poll() is not None:
                error = (folder / "redis.log").read_text(errors="replace").strip()
                pytest.skip(f"this redis-server cannot serve TLS: {error[-300:]}")
            if time.monotonic() > deadline:
                pytest.fail("redis-server did not come up on its TLS port")
            time.sleep(0.05)
        yield server
    finally:
        process.terminate()
        process.wait(timeout=10)


async def _run_one_job(url: str) -> None:
    app = Conveyor(url + "&prefix=tlstest")
    ran: list[Any] = []

    @app.job("t")
    async def t(payload: Any) -> None:
        ran.append(payload)

    async with app:
        job = await app.enqueue("t", "over TLS")
        async with app.worker(concurrency=1, poll_interval=0.05):
            assert (await app.wait(job.id, timeout=10)).state is JobState.COMPLETED
        await app.purge(["completed"])
    assert ran == ["over TLS"]


async def test_jobs_run_with_a_client_certificate(tls_server: TLSServer) -> None:
    await _run_one_job(
        tls_server.url(
            ssl_ca_certs=tls_server.file("ca.crt"),
            ssl_certfile=tls_server.file("client.crt"),
            ssl_keyfile=tls_server.file("client.key"),
        )
    )


async def test_without_a_client_certificate_the_server_refuses(tls_server: TLSServer) -> None:
    app = Conveyor(tls_server.url(ssl_ca_certs=tls_server.file("ca.crt")))
    with pytest.raises(BackendUnavailableError, match=r"client certificate.*ssl_certfile"):
        await app.open()


async def test_a_server_certificate_from_another_ca_is_refused(tls_server: TLSServer) -> None:
    app = Conveyor(
        tls_server.url(
            ssl_ca_certs=tls_server.file("other-ca.crt"),
            ssl_certfile=tls_server.file("client.crt"),
            ssl_keyfile=tls_server.file("client.key"),
        )
    )
    with pytest.raises(BackendUnavailableError, match=r"certificate did not verify.*ssl_ca_certs"):
        await app.open()


async def test_hostname_checks_and_cert_reqs(tls_server: TLSServer) -> None:
    client = {
        "ssl_certfile": tls_server.file("client.crt"),
        "ssl_keyfile": tls_server.file("client.key"),
    }
    ca = tls_server.file("ca.crt")
    # The server's certificate names 127.0.0.1, not localhost.
    app = Conveyor(tls_server.url("localhost", ssl_ca_certs=ca, **client))
    with pytest.raises(BackendUnavailableError, match=r"did not verify.*ssl_check_hostname"):
        await app.open()
    await _run_one_job(
        tls_server.url("localhost", ssl_ca_certs=ca, ssl_check_hostname="false", **client)
    )
    # Not verifying the server at all: no CA needed.
    await _run_one_job(tls_server.url(ssl_cert_reqs="none", **client))


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("ssl_cert_reqs=maybe", r"ssl_cert_reqs in .* must be none, optional or required"),
        ("ssl_check_hostname=yes", r"ssl_check_hostname in .* must be true or false"),
        (
            "ssl_cert_reqs=none&ssl_check_hostname=true",
            r"ssl_check_hostname=true in .* needs a certificate to check",
        ),
        ("ssl_keyfile=/k.pem", r"ssl_keyfile in .* needs ssl_certfile"),
        ("ssl_ca_certs=/no/such/ca.pem", r"cannot load ssl_ca_certs '/no/such/ca.pem'"),
        ("ssl_certfile=/no/such/c.pem", r"cannot load the client certificate"),
        ("ssl_ca_cert=/x", r"unknown option\(s\) 'ssl_ca_cert'"),
    ],
)
def test_bad_tls_options_are_refused(query: str, message: str) -> None:
    with pytest.raises(InvalidOptionError, match=message):
        Conveyor(f"rediss://127.0.0.1:6380/0?{query}")


def test_tls_options_need_a_tls_url() -> None:
    with pytest.raises(InvalidOptionError, match=r"unknown option\(s\) 'ssl_ca_certs'"):
        Conveyor("redis://127.0.0.1:6379/0?ssl_ca_certs=/ca.pem")
