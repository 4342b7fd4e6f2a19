"""common.natsclient's credentials: a .creds file's two blocks, an nkey seed file, and the
signature of the server's nonce, checked with the nkey's public key."""

from __future__ import annotations

import base64
import os

import nkeys
import pytest

from common.natsclient import Server, read_creds, read_seed, sign_nonce

CREDS = """-----BEGIN NATS USER JWT-----
{jwt}
------END NATS USER JWT------

************************* IMPORTANT *************************
NKEY Seed printed below can be used to sign and prove identity.
NKEYs are sensitive and should be treated as secrets.

-----BEGIN USER NKEY SEED-----
{seed}
------END USER NKEY SEED------

*************************************************************
"""


def new_seed() -> bytes:
    return nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)


def test_a_creds_file_gives_its_jwt_and_seed(tmp_path):
    seed = new_seed()
    path = tmp_path / "user.creds"
    path.write_text(CREDS.format(jwt="eyJ0eXAiOiJKV1QifQ.payload.sig", seed=seed.decode()))
    assert read_creds(str(path)) == ("eyJ0eXAiOiJKV1QifQ.payload.sig", seed)


@pytest.mark.parametrize("text", ["", "just text\n", "-----BEGIN NATS USER JWT-----\nabc\n"])
def test_a_file_without_both_blocks_is_refused(tmp_path, text):
    path = tmp_path / "bad.creds"
    path.write_text(text)
    with pytest.raises(ValueError, match="not a NATS credentials file"):
        read_creds(str(path))


def test_the_nonce_is_signed_with_the_seed(tmp_path):
    seed = new_seed()
    path = tmp_path / "user.nk"
    path.write_bytes(seed + b"\n")
    assert read_seed(str(path)) == seed
    signature, public = sign_nonce(read_seed(str(path)), "Qm9ndXMgbm9uY2U")
    assert public == nkeys.from_seed(bytearray(seed)).public_key.decode()
    verifier = nkeys.from_seed(bytearray(seed))  # the key pair's public half checks it
    assert verifier.verify(b"Qm9ndXMgbm9uY2U", base64.b64decode(signature))
    with pytest.raises(nkeys.ErrInvalidSignature):
        verifier.verify(b"another nonce", base64.b64decode(signature))


def test_a_file_that_is_no_seed_is_refused(tmp_path):
    path = tmp_path / "x"
    path.write_text("not a seed")
    with pytest.raises(ValueError, match="not an nkey seed"):
        read_seed(str(path))


@pytest.mark.parametrize(("url", "server"), [
    ("nats://h:4222", Server("nats", "h", 4222)), ("tls://10.0.0.1", Server("tls", "10.0.0.1", 4222)),
    ("h:5000", Server("nats", "h", 5000)), ("nats://[::1]:4223", Server("nats", "::1", 4223)),
])
def test_server_urls(url, server):
    assert Server.parse(url) == server
    assert Server.parse(str(server)) == server
