"""QUIC Initial packet protection: the key schedule and the AES ciphers (RFC 9001 §5).

The one module of clienthello that imports `cryptography` (with `clienthello.quic`,
which uses it). It knows nothing of the wire format: callers pass in the salt, the
labels and the bytes to protect. HKDF (RFC 5869, with RFC 8446 §7.1's Expand-Label)
and HMAC (RFC 2104) are written out here on the standard library's SHA-256;
`cryptography` gives only AES (GCM, and ECB for the header-protection mask), so any
version from 3.4 on will do.
"""

from __future__ import annotations

import functools
import hashlib
import struct
from collections.abc import Iterable
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "hkdf_extract",
    "hkdf_expand_label",
    "hkdf_expand_labels",
    "PacketProtection",
    "aead_tag",
    "HASH_LENGTH",
    "KEY_LENGTH",
    "IV_LENGTH",
    "SAMPLE_LENGTH",
    "TAG_LENGTH",
]

# TLS_AES_128_GCM_SHA256 protects every Initial packet (RFC 9001 §5.2).
HASH_LENGTH = 32
KEY_LENGTH = 16
IV_LENGTH = 12
SAMPLE_LENGTH = 16  # RFC 9001 §5.4.2: AES-based header protection samples 16 bytes
TAG_LENGTH = 16  # AEAD_AES_128_GCM's tag (RFC 5116 §5.1)
# HKDF-Expand can give at most 255 hash blocks (RFC 5869 §2.3).
_MAX_EXPAND = 255 * HASH_LENGTH


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    """HKDF-Extract with SHA-256 (RFC 5869 §2.2): the HMAC of ``ikm`` keyed by ``salt``."""
    return _mac(_salt_pads(bytes(salt)), ikm)


def hkdf_expand_label(secret: bytes, label: bytes, context: bytes, length: int) -> bytes:
    """HKDF-Expand-Label (RFC 8446 §7.1) with SHA-256.

    Args:
        secret: the pseudorandom key, e.g. an Initial secret.
        label: the label without its ``"tls13 "`` prefix, e.g. ``b"quic key"``.
        context: the context (empty for every QUIC use).
        length: how many bytes to derive (at most 8160).

    Returns:
        ``length`` bytes.

    Raises:
        ValueError: ``length`` or the label is out of range.
    """
    return _expand(_pads(secret), _info(label, context, length), length)


def hkdf_expand_labels(secret: bytes, labels: Iterable[tuple[bytes, int]]) -> list[bytes]:
    """`hkdf_expand_label` of one secret for several ``(label, length)``, empty context.

    The secret's HMAC pads are hashed once for all of them (a packet protection's key,
    IV and header protection key come from one secret).

    Raises:
        ValueError: a length or label is out of range.
    """
    pads = _pads(secret)
    return [_expand(pads, _info(label, b"", length), length) for label, length in labels]


def _info(label: bytes, context: bytes, length: int) -> bytes:
    """The HkdfLabel structure (RFC 8446 §7.1) of a label, context and length."""
    info = _INFO.get((label, context, length))
    if info is None:
        full_label = b"tls13 " + label
        if not 0 <= length <= _MAX_EXPAND or len(full_label) > 255 or len(context) > 255:
            raise ValueError("HKDF-Expand-Label argument out of range")
        info = struct.pack("!HB", length, len(full_label)) + full_label
        info += bytes([len(context)]) + context
        if len(_INFO) < 64:  # QUIC's few fixed labels; other callers just pay the packing
            _INFO[(label, context, length)] = info
    return info


def _expand(pads: tuple[Any, Any], info: bytes, length: int) -> bytes:
    """HKDF-Expand (RFC 5869 §2.3) of ``length`` bytes (at most 8160, checked by _info)."""
    if length <= HASH_LENGTH:  # every QUIC use: one HMAC block
        return _mac(pads, info + b"\x01")[:length]
    out = b""
    block = b""
    counter = 1
    while len(out) < length:  # at most 255 rounds
        block = _mac(pads, block + info + bytes([counter]))
        out += block
        counter += 1
    return out[:length]


def _pads(key: bytes) -> tuple[Any, Any]:
    """HMAC-SHA256 (RFC 2104) keyed by ``key``: SHA-256 states after its inner and outer pads."""
    # A MAC copies the two states (about 0.8 us in all), where `hmac.digest` sets its
    # key up anew for every call (2-4 us with OpenSSL 3), and a key used for several
    # MACs, like a QUIC traffic secret, pays for its pads once.
    if len(key) > _SHA256_BLOCK:
        key = hashlib.sha256(key).digest()
    padded = key.ljust(_SHA256_BLOCK, b"\0")
    return hashlib.sha256(padded.translate(_IPAD)), hashlib.sha256(padded.translate(_OPAD))


def _mac(pads: tuple[Any, Any], message: bytes) -> bytes:
    """HMAC-SHA256 of ``message`` with the key whose `_pads` these are."""
    inner = pads[0].copy()
    inner.update(message)
    outer = pads[1].copy()
    outer.update(inner.digest())
    digest: bytes = outer.digest()
    return digest


_SHA256_BLOCK = 64
_IPAD = bytes(b ^ 0x36 for b in range(256))  # bytes.translate tables: XOR every byte
_OPAD = bytes(b ^ 0x5C for b in range(256))
# A version's Initial salt keys every Extract of it: its pads are kept (a few salts).
_salt_pads = functools.lru_cache(maxsize=16)(_pads)


# The HkdfLabel structures of the (label, context, length) triples seen so far.
_INFO: dict[tuple[bytes, bytes, int], bytes] = {}


class PacketProtection:
    """The ciphers of one direction of one key phase: AES-128-GCM and the AES-ECB mask.

    Built once per connection and direction; the `Cipher` and `AESGCM` objects are
    made here and reused for every packet (making them costs more than using them).

    Args:
        key: the 16-byte AEAD key.
        iv: the 12-byte AEAD IV; each packet's nonce is it XORed with the packet number.
        hp: the 16-byte header protection key.
    """

    __slots__ = ("_aead", "_hp", "_iv", "hp", "iv", "key")

    def __init__(self, key: bytes, iv: bytes, hp: bytes) -> None:
        self.key = key
        self.iv = iv
        self.hp = hp
        self._aead = AESGCM(key)
        self._iv = int.from_bytes(iv, "big")
        # ECB is what RFC 9001 §5.4.3 specifies: one block, the sample, per packet.
        # The encryptor holds no state between whole blocks, so one serves all.
        self._hp = Cipher(algorithms.AES(hp), modes.ECB()).encryptor()

    def mask(self, sample: bytes) -> bytes:
        """The 5-byte header protection mask for a 16-byte ``sample`` (RFC 9001 §5.4.3)."""
        return self._hp.update(sample)[:5]

    def _nonce(self, packet_number: int) -> bytes:
        return (self._iv ^ packet_number).to_bytes(IV_LENGTH, "big")

    def decrypt(self, packet_number: int, header: bytes, ciphertext: bytes) -> bytes | None:
        """Open one packet's payload (RFC 9001 §5.3).

        Args:
            packet_number: the full (decoded) packet number.
            header: the unprotected header, the associated data.
            ciphertext: the protected payload, its 16-byte tag at the end.

        Returns:
            The plaintext payload, or None when it does not authenticate.
        """
        if len(ciphertext) < TAG_LENGTH:
            return None
        try:
            return self._aead.decrypt(self._nonce(packet_number), ciphertext, header)
        except InvalidTag:
            return None

    def encrypt(self, packet_number: int, header: bytes, plaintext: bytes) -> bytes:
        """Seal one packet's payload: the ciphertext with its 16-byte tag appended."""
        return self._aead.encrypt(self._nonce(packet_number), plaintext, header)


def aead_tag(key: bytes, nonce: bytes, associated_data: bytes) -> bytes:
    """The AES-128-GCM tag over ``associated_data`` with an empty plaintext.

    This is the Retry Integrity Tag's computation (RFC 9001 §5.8).
    """
    return AESGCM(key).encrypt(nonce, b"", associated_data)
