"""TLS key schedule and Linux kernel-TLS ``crypto_info`` packing (pure: bytes in, bytes out).

After a userspace handshake the kernel needs, per direction, the record key, the IV
and the next record sequence number, packed as a ``struct tls12_crypto_info_*`` from
``<linux/tls.h>``. This module derives those from the secrets OpenSSL writes to its
key log: TLS 1.3 application traffic secrets (RFC 8446 section 7.3) and the TLS 1.2
master secret expanded with the PRF (RFC 5246 section 6.3).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import struct
from dataclasses import dataclass

TLS_1_2 = 0x0303
TLS_1_3 = 0x0304


class KernelCipher(enum.IntEnum):
    """Cipher types of ``<linux/tls.h>`` (``TLS_CIPHER_*``)."""

    AES_GCM_128 = 51
    AES_GCM_256 = 52
    CHACHA20_POLY1305 = 54


@dataclass(frozen=True)
class CipherSuite:
    code: int  # IANA value, as in the ServerHello
    name: str  # OpenSSL's name, as ``SSLObject.cipher()[0]`` reports it
    version: int  # TLS_1_2 or TLS_1_3
    kernel_cipher: KernelCipher
    hash_name: str  # the suite's PRF / HKDF hash
    key_length: int
    iv_length: int  # TLS 1.3: the per-record nonce base; TLS 1.2: the implicit (fixed) IV

    @property
    def version_name(self) -> str:
        return "TLSv1.3" if self.version == TLS_1_3 else "TLSv1.2"


def _suite(code: int, name: str, version: int, cipher: KernelCipher, hash_name: str) -> CipherSuite:
    key_length = 16 if cipher is KernelCipher.AES_GCM_128 else 32
    gcm_tls12 = version == TLS_1_2 and cipher is not KernelCipher.CHACHA20_POLY1305
    return CipherSuite(code, name, version, cipher, hash_name, key_length, 4 if gcm_tls12 else 12)


# Every suite the kernel can take over: AEAD ciphers only, ECDHE key exchange for TLS 1.2.
SUITES: dict[int, CipherSuite] = {
    s.code: s
    for s in (
        _suite(0x1301, "TLS_AES_128_GCM_SHA256", TLS_1_3, KernelCipher.AES_GCM_128, "sha256"),
        _suite(0x1302, "TLS_AES_256_GCM_SHA384", TLS_1_3, KernelCipher.AES_GCM_256, "sha384"),
        _suite(0x1303, "TLS_CHACHA20_POLY1305_SHA256", TLS_1_3,
               KernelCipher.CHACHA20_POLY1305, "sha256"),
        _suite(0xC02B, "ECDHE-ECDSA-AES128-GCM-SHA256", TLS_1_2,
               KernelCipher.AES_GCM_128, "sha256"),
        _suite(0xC02C, "ECDHE-ECDSA-AES256-GCM-SHA384", TLS_1_2,
               KernelCipher.AES_GCM_256, "sha384"),
        _suite(0xCCA9, "ECDHE-ECDSA-CHACHA20-POLY1305", TLS_1_2,
               KernelCipher.CHACHA20_POLY1305, "sha256"),
        _suite(0xC02F, "ECDHE-RSA-AES128-GCM-SHA256", TLS_1_2, KernelCipher.AES_GCM_128, "sha256"),
        _suite(0xC030, "ECDHE-RSA-AES256-GCM-SHA384", TLS_1_2, KernelCipher.AES_GCM_256, "sha384"),
        _suite(0xCCA8, "ECDHE-RSA-CHACHA20-POLY1305", TLS_1_2,
               KernelCipher.CHACHA20_POLY1305, "sha256"),
    )
}
SUITES_BY_NAME: dict[str, CipherSuite] = {s.name: s for s in SUITES.values()}


# --- key schedule -----------------------------------------------------------------


def hkdf_expand(prk: bytes, info: bytes, length: int, hash_name: str) -> bytes:
    """HKDF-Expand of RFC 5869."""
    digest_size = hashlib.new(hash_name).digest_size
    if length > 255 * digest_size:
        raise ValueError(f"HKDF-Expand cannot give {length} bytes with {hash_name}")
    output = b""
    block = b""
    counter = 1
    while len(output) < length:
        block = hmac.digest(prk, block + info + bytes([counter]), hash_name)
        output += block
        counter += 1
    return output[:length]


def hkdf_expand_label(
    secret: bytes, label: bytes, context: bytes, length: int, hash_name: str
) -> bytes:
    """HKDF-Expand-Label of RFC 8446 section 7.1."""
    full_label = b"tls13 " + label
    hkdf_label = (
        struct.pack(">HB", length, len(full_label)) + full_label + bytes([len(context)]) + context
    )
    return hkdf_expand(secret, hkdf_label, length, hash_name)


@dataclass(frozen=True)
class TrafficKeys:
    """One direction's record protection: the AEAD key and the IV.

    TLS 1.3: ``iv`` is the 12-byte nonce base. TLS 1.2: ``iv`` is the implicit IV
    (4 bytes for AES-GCM, whose other 8 nonce bytes travel in each record; 12 for ChaCha20).
    """

    key: bytes
    iv: bytes


def tls13_traffic_keys(suite: CipherSuite, traffic_secret: bytes) -> TrafficKeys:
    """The record key and IV of a TLS 1.3 traffic secret (RFC 8446 section 7.3)."""
    key = hkdf_expand_label(traffic_secret, b"key", b"", suite.key_length, suite.hash_name)
    iv = hkdf_expand_label(traffic_secret, b"iv", b"", suite.iv_length, suite.hash_name)
    return TrafficKeys(key, iv)


def tls12_prf(secret: bytes, label: bytes, seed: bytes, length: int, hash_name: str) -> bytes:
    """PRF(secret, label, seed) = P_hash(secret, label + seed) of RFC 5246 section 5."""
    label_seed = label + seed
    output = b""
    a = label_seed
    while len(output) < length:
        a = hmac.digest(secret, a, hash_name)
        output += hmac.digest(secret, a + label_seed, hash_name)
    return output[:length]


def tls12_key_block(
    suite: CipherSuite, master_secret: bytes, client_random: bytes, server_random: bytes
) -> tuple[TrafficKeys, TrafficKeys]:
    """(client write keys, server write keys) of an AEAD suite (RFC 5246 section 6.3).

    AEAD suites have no MAC keys, so the key block is
    client_write_key | server_write_key | client_write_IV | server_write_IV.
    """
    k, i = suite.key_length, suite.iv_length
    block = tls12_prf(
        master_secret, b"key expansion", server_random + client_random, 2 * (k + i),
        suite.hash_name,
    )
    client = TrafficKeys(block[:k], block[2 * k : 2 * k + i])
    server = TrafficKeys(block[k : 2 * k], block[2 * k + i : 2 * (k + i)])
    return client, server


# --- key log ----------------------------------------------------------------------


def parse_keylog(text: bytes, client_random: bytes) -> dict[str, bytes]:
    """The secrets of one handshake in NSS key log format, by label.

    Lines are ``LABEL <client_random hex> <secret hex>``; lines of other handshakes,
    comments and blank lines are skipped.
    """
    wanted = client_random.hex().encode()
    secrets: dict[str, bytes] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) != 3 or fields[1].lower() != wanted:
            continue
        label = fields[0].decode("ascii")
        try:
            secrets[label] = bytes.fromhex(fields[2].decode("ascii"))
        except ValueError:
            raise ValueError(f"key log line {label} for this handshake is not hex") from None
    return secrets


def session_keys(
    suite: CipherSuite, secrets: dict[str, bytes], client_random: bytes, server_random: bytes
) -> tuple[TrafficKeys, TrafficKeys]:
    """(transmit, receive) keys of a client after its handshake, from its key log secrets."""
    if suite.version == TLS_1_3:
        tx = tls13_traffic_keys(suite, _secret(secrets, "CLIENT_TRAFFIC_SECRET_0"))
        rx = tls13_traffic_keys(suite, _secret(secrets, "SERVER_TRAFFIC_SECRET_0"))
        return tx, rx
    # OpenSSL logs the master secret actually in use: with extended master secret
    # (RFC 7627) that is already the session-hash one.
    master = _secret(secrets, "CLIENT_RANDOM")
    return tls12_key_block(suite, master, client_random, server_random)


def _secret(secrets: dict[str, bytes], label: str) -> bytes:
    if label not in secrets:
        raise ValueError(f"the key log has no {label} line for this handshake")
    return secrets[label]


# --- sequence numbers and nonces --------------------------------------------------


def initial_record_sequence(version: int) -> int:
    """The sequence number of the first record after the hand-off, in either direction.

    TLS 1.3 application traffic keys are fresh, so they start at 0. In TLS 1.2 the
    Finished message was record 0 under the new keys, both ways (also on resumption).
    """
    return 0 if version == TLS_1_3 else 1


def next_explicit_nonce(nonce: bytes) -> bytes:
    """The 8-byte TLS 1.2 AES-GCM explicit nonce after ``nonce``, wrapping at 2**64.

    The kernel sends the IV it is given as the explicit nonce of its first record and
    counts up from there; starting one past our Finished record's nonce never reuses one.
    """
    (value,) = struct.unpack(">Q", nonce)
    return struct.pack(">Q", (value + 1) % 2**64)


# --- struct tls12_crypto_info_* ---------------------------------------------------

# Packed, native-endian header; rec_seq is big-endian on the wire and in the struct.
# Field order after the header: iv, key, salt (GCM only), rec_seq.
_FIELD_LENGTHS: dict[KernelCipher, tuple[int, ...]] = {
    KernelCipher.AES_GCM_128: (8, 16, 4, 8),
    KernelCipher.AES_GCM_256: (8, 32, 4, 8),
    KernelCipher.CHACHA20_POLY1305: (12, 32, 8),
}
_LAYOUTS: dict[KernelCipher, struct.Struct] = {
    cipher: struct.Struct("=HH" + "".join(f"{n}s" for n in lengths))
    for cipher, lengths in _FIELD_LENGTHS.items()
}
CRYPTO_INFO_HEADER = struct.Struct("=HH")


def crypto_info_size(cipher: KernelCipher) -> int:
    return _LAYOUTS[cipher].size


@dataclass(frozen=True)
class CryptoInfo:
    """A ``struct tls12_crypto_info_*`` for ``setsockopt(SOL_TLS, TLS_TX/TLS_RX)``."""

    version: int
    cipher: KernelCipher
    iv: bytes
    key: bytes
    salt: bytes  # empty for ChaCha20-Poly1305
    rec_seq: int

    def pack(self) -> bytes:
        seq = struct.pack(">Q", self.rec_seq)
        if self.cipher is KernelCipher.CHACHA20_POLY1305:
            fields: tuple[bytes, ...] = (self.iv, self.key, seq)
        else:
            fields = (self.iv, self.key, self.salt, seq)
        # struct pads or truncates "s" fields silently; a wrong length here is a bug.
        for field, length in zip(fields, _FIELD_LENGTHS[self.cipher], strict=True):
            if len(field) != length:
                raise ValueError(
                    f"{self.cipher.name} crypto_info field of {len(field)} bytes, expected {length}"
                )
        return _LAYOUTS[self.cipher].pack(self.version, self.cipher, *fields)

    @classmethod
    def unpack(cls, data: bytes) -> CryptoInfo:
        version, cipher_type = CRYPTO_INFO_HEADER.unpack_from(data)
        cipher = KernelCipher(cipher_type)
        fields = _LAYOUTS[cipher].unpack(data)
        if cipher is KernelCipher.CHACHA20_POLY1305:
            iv, key, seq = fields[2:]
            salt = b""
        else:
            iv, key, salt, seq = fields[2:]
        (rec_seq,) = struct.unpack(">Q", seq)
        return cls(version, cipher, iv, key, salt, rec_seq)


def crypto_info(
    suite: CipherSuite, keys: TrafficKeys, rec_seq: int, explicit_nonce: bytes = bytes(8)
) -> CryptoInfo:
    """The kernel's view of one direction of a session.

    ``explicit_nonce`` matters only for TLS 1.2 AES-GCM transmit: the first nonce the
    kernel will send. For receive the kernel reads each record's nonce from the record.
    """
    if suite.kernel_cipher is KernelCipher.CHACHA20_POLY1305:
        return CryptoInfo(suite.version, suite.kernel_cipher, keys.iv, keys.key, b"", rec_seq)
    if suite.version == TLS_1_3:
        salt, iv = keys.iv[:4], keys.iv[4:]
    else:
        salt, iv = keys.iv, explicit_nonce
    return CryptoInfo(suite.version, suite.kernel_cipher, iv, keys.key, salt, rec_seq)
