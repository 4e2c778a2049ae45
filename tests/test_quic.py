"""clienthello.quic: the ClientHello in QUIC Initial packets, v1, v2 and drafts.

The RFC 9001 and RFC 9369 appendix A vectors check keys, packet protection and Retry
tags byte for byte; real fixtures are then cut into CRYPTO frames every which way
(shuffled, overlapping, repeated, across packets, with PING and PADDING between) and
must always give the same ClientHello. Malformed input raises only clienthello's own
exceptions (hypothesis checks that for random and bit-flipped datagrams), and an
aioquic client, when installed, is both a source of real Initials and the judge of
the CONNECTION_CLOSE and Retry we build.
"""

from __future__ import annotations

import contextlib
import hmac
import itertools
import random
import subprocess
import sys

import pytest
from helpers import load
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import clienthello
from clienthello import ClientHelloError, HelloTooLarge, MalformedHello, NotTLS, _quic_crypto, quic
from clienthello._quic_packet import read_varint
from clienthello.quic import (
    PING_FRAME,
    QUIC_DRAFT_29,
    QUIC_V1,
    QUIC_V2,
    InitialReader,
    PacketType,
    build_initial,
    crypto_frame,
)

FUZZ = settings(
    deadline=None,
    max_examples=300,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- RFC 9001 appendix A (v1) and RFC 9369 appendix A (v2) ---------------------------

RFC_DCID = bytes.fromhex("8394c8f03e515708")
RFC_SERVER_SCID = bytes.fromhex("f067a5502a4262b5")

# The CRYPTO frame holding the example ClientHello (RFC 9001 A.2), then PADDING.
RFC_CLIENT_PAYLOAD = bytes.fromhex(
    "060040f1010000ed0303ebf8fa56f12939b9584a3896472ec40bb863cfd3e868"
    "04fe3a47f06a2b69484c00000413011302010000c000000010000e00000b6578"
    "616d706c652e636f6dff01000100000a00080006001d00170018001000070005"
    "04616c706e000500050100000000003300260024001d00209370b2c9caa47fba"
    "baf4559fedba753de171fa71f50f1ce15d43e994ec74d748002b000302030400"
    "0d0010000e0403050306030203080408050806002d00020101001c0002400100"
    "3900320408ffffffffffffffff05048000ffff07048000ffff08011001048000"
    "75300901100f088394c8f03e51570806048000ffff"
) + bytes(917)

RFC9001_CLIENT_INITIAL = bytes.fromhex(
    "c000000001088394c8f03e5157080000449e7b9aec34d1b1c98dd7689fb8ec11"
    "d242b123dc9bd8bab936b47d92ec356c0bab7df5976d27cd449f63300099f399"
    "1c260ec4c60d17b31f8429157bb35a1282a643a8d2262cad67500cadb8e7378c"
    "8eb7539ec4d4905fed1bee1fc8aafba17c750e2c7ace01e6005f80fcb7df6212"
    "30c83711b39343fa028cea7f7fb5ff89eac2308249a02252155e2347b63d58c5"
    "457afd84d05dfffdb20392844ae812154682e9cf012f9021a6f0be17ddd0c208"
    "4dce25ff9b06cde535d0f920a2db1bf362c23e596d11a4f5a6cf3948838a3aec"
    "4e15daf8500a6ef69ec4e3feb6b1d98e610ac8b7ec3faf6ad760b7bad1db4ba3"
    "485e8a94dc250ae3fdb41ed15fb6a8e5eba0fc3dd60bc8e30c5c4287e53805db"
    "059ae0648db2f64264ed5e39be2e20d82df566da8dd5998ccabdae053060ae6c"
    "7b4378e846d29f37ed7b4ea9ec5d82e7961b7f25a9323851f681d582363aa5f8"
    "9937f5a67258bf63ad6f1a0b1d96dbd4faddfcefc5266ba6611722395c906556"
    "be52afe3f565636ad1b17d508b73d8743eeb524be22b3dcbc2c7468d54119c74"
    "68449a13d8e3b95811a198f3491de3e7fe942b330407abf82a4ed7c1b311663a"
    "c69890f4157015853d91e923037c227a33cdd5ec281ca3f79c44546b9d90ca00"
    "f064c99e3dd97911d39fe9c5d0b23a229a234cb36186c4819e8b9c5927726632"
    "291d6a418211cc2962e20fe47feb3edf330f2c603a9d48c0fcb5699dbfe58964"
    "25c5bac4aee82e57a85aaf4e2513e4f05796b07ba2ee47d80506f8d2c25e50fd"
    "14de71e6c418559302f939b0e1abd576f279c4b2e0feb85c1f28ff18f58891ff"
    "ef132eef2fa09346aee33c28eb130ff28f5b766953334113211996d20011a198"
    "e3fc433f9f2541010ae17c1bf202580f6047472fb36857fe843b19f5984009dd"
    "c324044e847a4f4a0ab34f719595de37252d6235365e9b84392b061085349d73"
    "203a4a13e96f5432ec0fd4a1ee65accdd5e3904df54c1da510b0ff20dcc0c77f"
    "cb2c0e0eb605cb0504db87632cf3d8b4dae6e705769d1de354270123cb11450e"
    "fc60ac47683d7b8d0f811365565fd98c4c8eb936bcab8d069fc33bd801b03ade"
    "a2e1fbc5aa463d08ca19896d2bf59a071b851e6c239052172f296bfb5e724047"
    "90a2181014f3b94a4e97d117b438130368cc39dbb2d198065ae3986547926cd2"
    "162f40a29f0c3c8745c0f50fba3852e566d44575c29d39a03f0cda721984b6f4"
    "40591f355e12d439ff150aab7613499dbd49adabc8676eef023b15b65bfc5ca0"
    "6948109f23f350db82123535eb8a7433bdabcb909271a6ecbcb58b936a88cd4e"
    "8f2e6ff5800175f113253d8fa9ca8885c2f552e657dc603f252e1a8e308f76f0"
    "be79e2fb8f5d5fbbe2e30ecadd220723c8c0aea8078cdfcb3868263ff8f09400"
    "54da48781893a7e49ad5aff4af300cd804a6b6279ab3ff3afb64491c85194aab"
    "760d58a606654f9f4400e8b38591356fbf6425aca26dc85244259ff2b19c41b9"
    "f96f3ca9ec1dde434da7d2d392b905ddf3d1f9af93d1af5950bd493f5aa731b4"
    "056df31bd267b6b90a079831aaf579be0a39013137aac6d404f518cfd4684064"
    "7e78bfe706ca4cf5e9c5453e9f7cfd2b8b4c8d169a44e55c88d4a9a7f9474241"
    "e221af44860018ab0856972e194cd934"
)

RFC9369_CLIENT_INITIAL = bytes.fromhex(
    "d76b3343cf088394c8f03e5157080000449ea0c95e82ffe67b6abcdb4298b485"
    "dd04de806071bf03dceebfa162e75d6c96058bdbfb127cdfcbf903388e99ad04"
    "9f9a3dd4425ae4d0992cfff18ecf0fdb5a842d09747052f17ac2053d21f57c5d"
    "250f2c4f0e0202b70785b7946e992e58a59ac52dea6774d4f03b55545243cf1a"
    "12834e3f249a78d395e0d18f4d766004f1a2674802a747eaa901c3f10cda5500"
    "cb9122faa9f1df66c392079a1b40f0de1c6054196a11cbea40afb6ef5253cd68"
    "18f6625efce3b6def6ba7e4b37a40f7732e093daa7d52190935b8da58976ff33"
    "12ae50b187c1433c0f028edcc4c2838b6a9bfc226ca4b4530e7a4ccee1bfa2a3"
    "d396ae5a3fb512384b2fdd851f784a65e03f2c4fbe11a53c7777c023462239dd"
    "6f7521a3f6c7d5dd3ec9b3f233773d4b46d23cc375eb198c63301c21801f6520"
    "bcfb7966fc49b393f0061d974a2706df8c4a9449f11d7f3d2dcbb90c6b877045"
    "636e7c0c0fe4eb0f697545460c806910d2c355f1d253bc9d2452aaa549e27a1f"
    "ac7cf4ed77f322e8fa894b6a83810a34b361901751a6f5eb65a0326e07de7c12"
    "16ccce2d0193f958bb3850a833f7ae432b65bc5a53975c155aa4bcb4f7b2c4e5"
    "4df16efaf6ddea94e2c50b4cd1dfe06017e0e9d02900cffe1935e0491d77ffb4"
    "fdf85290fdd893d577b1131a610ef6a5c32b2ee0293617a37cbb08b847741c3b"
    "8017c25ca9052ca1079d8b78aebd47876d330a30f6a8c6d61dd1ab5589329de7"
    "14d19d61370f8149748c72f132f0fc99f34d766c6938597040d8f9e2bb522ff9"
    "9c63a344d6a2ae8aa8e51b7b90a4a806105fcbca31506c446151adfeceb51b91"
    "abfe43960977c87471cf9ad4074d30e10d6a7f03c63bd5d4317f68ff325ba3bd"
    "80bf4dc8b52a0ba031758022eb025cdd770b44d6d6cf0670f4e990b22347a7db"
    "848265e3e5eb72dfe8299ad7481a408322cac55786e52f633b2fb6b614eaed18"
    "d703dd84045a274ae8bfa73379661388d6991fe39b0d93debb41700b41f90a15"
    "c4d526250235ddcd6776fc77bc97e7a417ebcb31600d01e57f32162a8560cacc"
    "7e27a096d37a1a86952ec71bd89a3e9a30a2a26162984d7740f81193e8238e61"
    "f6b5b984d4d3dfa033c1bb7e4f0037febf406d91c0dccf32acf423cfa1e70710"
    "10d3f270121b493ce85054ef58bada42310138fe081adb04e2bd901f2f13458b"
    "3d6758158197107c14ebb193230cd1157380aa79cae1374a7c1e5bbcb80ee23e"
    "06ebfde206bfb0fcbc0edc4ebec309661bdd908d532eb0c6adc38b7ca7331dce"
    "8dfce39ab71e7c32d318d136b6100671a1ae6a6600e3899f31f0eed19e3417d1"
    "34b90c9058f8632c798d4490da4987307cba922d61c39805d072b589bd52fdf1"
    "e86215c2d54e6670e07383a27bbffb5addf47d66aa85a0c6f9f32e59d85a44dd"
    "5d3b22dc2be80919b490437ae4f36a0ae55edf1d0b5cb4e9a3ecabee93dfc6e3"
    "8d209d0fa6536d27a5d6fbb17641cde27525d61093f1b28072d111b2b4ae5f89"
    "d5974ee12e5cf7d5da4d6a31123041f33e61407e76cffcdcfd7e19ba58cf4b53"
    "6f4c4938ae79324dc402894b44faf8afbab35282ab659d13c93f70412e85cb19"
    "9a37ddec600545473cfb5a05e08d0b209973b2172b4d21fb69745a262ccde96b"
    "a18b2faa745b6fe189cf772a9f84cbfc"
)

# RFC 9001 A.3 / RFC 9369 A.3: the server's Initial (ServerHello and an ACK).
RFC_SERVER_PAYLOAD = bytes.fromhex(
    "02000000000600405a020000560303eefce7f7b37ba1d1632e96677825ddf739"
    "88cfc79825df566dc5430b9a045a1200130100002e00330024001d00209d3c94"
    "0d89690b84d08a60993c144eca684d1081287c834d5311bcf32bb9da1a002b00"
    "020304"
)
RFC9001_SERVER_INITIAL = bytes.fromhex(
    "cf000000010008f067a5502a4262b5004075c0d95a482cd0991cd25b0aac406a"
    "5816b6394100f37a1c69797554780bb38cc5a99f5ede4cf73c3ec2493a1839b3"
    "dbcba3f6ea46c5b7684df3548e7ddeb9c3bf9c73cc3f3bded74b562bfb19fb84"
    "022f8ef4cdd93795d77d06edbb7aaf2f58891850abbdca3d20398c276456cbc4"
    "2158407dd074ee"
)
RFC9369_SERVER_INITIAL = bytes.fromhex(
    "dc6b3343cf0008f067a5502a4262b5004075d92faaf16f05d8a4398c47089698"
    "baeea26b91eb761d9b89237bbf87263017915358230035f7fd3945d88965cf17"
    "f9af6e16886c61bfc703106fbaf3cb4cfa52382dd16a393e42757507698075b2"
    "c984c707f0a0812d8cd5a6881eaf21ceda98f4bd23f6fe1a3e2c43edd9ce7ca8"
    "4bed8521e2e140"
)
# RFC 9001 A.4 / RFC 9369 A.4: a Retry with the token "token".
RFC9001_RETRY = bytes.fromhex(
    "ff000000010008f067a5502a4262b5746f6b656e04a265ba2eff4d829058fb3f0f2496ba"
)
RFC9369_RETRY = bytes.fromhex(
    "cf6b3343cf0008f067a5502a4262b5746f6b656ec8646ce8bfe33952d955543665dcc7b6"
)

# version: (client secret, server secret, client key/iv/hp, server key/iv/hp)
RFC_KEYS = {
    QUIC_V1: (
        "c00cf151ca5be075ed0ebfb5c80323c42d6b7db67881289af4008f1f6c357aea",
        "3c199828fd139efd216c155ad844cc81fb82fa8d7446fa7d78be803acdda951b",
        ("1f369613dd76d5467730efcbe3b1a22d", "fa044b2f42a3fd3b46fb255c",
         "9f50449e04a0e810283a1e9933adedd2"),
        ("cf3a5331653c364c88f0f379b6067e37", "0ac1493ca1905853b0bba03e",
         "c206b8d9b9f0f37644430b490eeaa314"),
    ),
    QUIC_V2: (
        "14ec9d6eb9fd7af83bf5a668bc17a7e283766aade7ecd0891f70f9ff7f4bf47b",
        "0263db1782731bf4588e7e4d93b7463907cb8cd8200b5da55a8bd488eafc37c1",
        ("8b1a0bc121284290a29e0971b5cd045d", "91f73e2351d8fa91660e909f",
         "45b95e15235d6f45a6b19cbcb0294ba9"),
        ("82db637861d55e1d011f19ea71d5d2a7", "dd13c276499c0249d3310652",
         "edf6d05c83121201b436e16877593c3a"),
    ),
}  # fmt: skip
RFC_CLIENT_INITIALS = {QUIC_V1: RFC9001_CLIENT_INITIAL, QUIC_V2: RFC9369_CLIENT_INITIAL}
RFC_SERVER_INITIALS = {QUIC_V1: RFC9001_SERVER_INITIAL, QUIC_V2: RFC9369_SERVER_INITIAL}
RFC_RETRIES = {QUIC_V1: RFC9001_RETRY, QUIC_V2: RFC9369_RETRY}
VERSIONS = [QUIC_V1, QUIC_V2, QUIC_DRAFT_29]

DCID = bytes.fromhex("0001020304050607")
SCID = bytes.fromhex("a0a1a2a3")


def hello_message(name: str) -> bytes:
    """A fixture's ClientHello handshake message (the TLS record layer removed)."""
    return clienthello.parse(load(name)).raw


CHROME = hello_message("chrome125")  # about 1.8 KB: a post-quantum key share


@pytest.mark.parametrize("version", [QUIC_V1, QUIC_V2])
def test_rfc_initial_keys(version: int) -> None:
    client_secret, server_secret, client_keys, server_keys = RFC_KEYS[version]
    client, server = quic.initial_secrets(version, RFC_DCID)
    assert (client.hex(), server.hex()) == (client_secret, server_secret)
    assert tuple(k.hex() for k in quic.derive_key_iv_hp(version, client)) == client_keys
    assert tuple(k.hex() for k in quic.derive_key_iv_hp(version, server)) == server_keys
    protection = quic.initial_protection(version, RFC_DCID, is_client=False)
    assert (protection.key.hex(), protection.iv.hex(), protection.hp.hex()) == server_keys


def _reference_expand_label(secret: bytes, label: bytes, context: bytes, length: int) -> bytes:
    """RFC 8446 §7.1 over the standard library's `hmac`, block by block (RFC 5869 §2.3)."""
    full = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes([len(full)]) + full + bytes([len(context)]) + context
    out, block = b"", b""
    for counter in range(1, 256):
        if len(out) >= length:
            break
        block = hmac.digest(secret, block + info + bytes([counter]), "sha256")
        out += block
    return out[:length]


@given(
    salt=st.binary(max_size=150),
    ikm=st.binary(max_size=150),
    label=st.binary(max_size=40),
    context=st.binary(max_size=40),
    length=st.integers(0, 200),
)
def test_hkdf_agrees_with_the_standard_library_hmac(
    salt: bytes, ikm: bytes, label: bytes, context: bytes, length: int
) -> None:
    # The HMAC is ours (SHA-256 states of the padded key, copied per MAC): keys shorter
    # than, equal to and longer than SHA-256's 64-byte block, outputs over one block.
    secret = _quic_crypto.hkdf_extract(salt, ikm)
    assert secret == hmac.digest(salt, ikm, "sha256")
    expected = _reference_expand_label(secret, label, context, length)
    assert _quic_crypto.hkdf_expand_label(secret, label, context, length) == expected
    if not context:
        pair = _quic_crypto.hkdf_expand_labels(ikm, [(label, length), (b"quic iv", 12)])
        assert pair == [
            _reference_expand_label(ikm, label, b"", length),
            _reference_expand_label(ikm, b"quic iv", b"", 12),
        ]


@pytest.mark.parametrize("version", [QUIC_V1, QUIC_V2])
def test_rfc_client_initial_built_byte_for_byte(version: int) -> None:
    packet = build_initial(version, RFC_DCID, b"", [RFC_CLIENT_PAYLOAD], packet_number=2)
    assert packet == RFC_CLIENT_INITIALS[version]


@pytest.mark.parametrize("version", [QUIC_V1, QUIC_V2])
def test_rfc_client_initial_read(version: int) -> None:
    datagram = RFC_CLIENT_INITIALS[version]
    assert quic.is_client_initial(datagram)
    header = quic.pull_quic_header(datagram)
    assert (header.version, header.packet_type) == (version, PacketType.INITIAL)
    assert (header.destination_cid, header.source_cid, header.token) == (RFC_DCID, b"", b"")
    assert (header.length, header.pn_offset, header.end) == (1182, 18, 1200)

    found = InitialReader().feed(datagram)
    assert found is not None
    hello = found.hello
    assert hello.server_name == "example.com"
    assert hello.cipher_suites == (0x1301, 0x1302)
    assert hello.alpn_protocols == (b"alpn",)
    assert hello.supported_versions == (0x0304,)
    assert hello.key_share_groups == (0x001D,)
    assert hello.raw == RFC_CLIENT_PAYLOAD[4 : 4 + 0xF1]
    assert found.version == version
    assert found.original_destination_connection_id == RFC_DCID
    assert found.destination_connection_id == RFC_DCID
    assert (found.source_connection_id, found.token, found.token_seen) == (b"", b"", False)
    assert (found.retry_seen, found.packets, found.crypto_frames, found.datagrams) == (
        False, 1, 1, (0,),
    )  # fmt: skip


@pytest.mark.parametrize("version", [QUIC_V1, QUIC_V2])
def test_rfc_server_initial(version: int) -> None:
    packet = build_initial(
        version, b"", RFC_SERVER_SCID, [RFC_SERVER_PAYLOAD], packet_number=1,
        packet_number_length=2, original_destination_cid=RFC_DCID, is_client=False, pad_to=0,
    )  # fmt: skip
    assert packet == RFC_SERVER_INITIALS[version]
    # A server's Initial does not open with the client's keys.
    with pytest.raises(MalformedHello) as caught:
        InitialReader().feed(packet)
    assert caught.value.reason == "not decryptable with the Initial keys"
    assert caught.value.field == "datagram 0 packet 0 payload"


@pytest.mark.parametrize("version", [QUIC_V1, QUIC_V2])
def test_rfc_retry(version: int) -> None:
    retry = quic.build_retry(version, RFC_DCID, b"", RFC_SERVER_SCID, b"token")
    assert retry == RFC_RETRIES[version]
    header = quic.pull_quic_header(retry)
    assert header.packet_type is PacketType.RETRY
    assert (header.destination_cid, header.source_cid, header.token) == (
        b"", RFC_SERVER_SCID, b"token",
    )  # fmt: skip
    assert header.integrity_tag == retry[-16:]
    assert quic.retry_integrity_tag(version, RFC_DCID, retry[:-16]) == retry[-16:]
    assert not quic.is_client_initial(retry)


def test_decode_packet_number() -> None:
    # RFC 9000 A.3's example, then the edges of the window.
    assert quic.decode_packet_number(0x9B32, 16, 0xA82F30EA + 1) == 0xA82F9B32
    assert quic.decode_packet_number(0, 8, 0) == 0
    assert quic.decode_packet_number(0xFF, 8, 0x100) == 0xFF
    assert quic.decode_packet_number(0x01, 8, 0xFF) == 0x101
    assert quic.decode_packet_number(0x7F, 8, 0x180) == 0x17F


def test_varints_round_trip() -> None:
    for value in (0, 63, 64, 16383, 16384, 2**30 - 1, 2**30, 2**62 - 1):
        encoded = quic.encode_varint(value)
        assert read_varint(encoded, 0, len(encoded), "v") == (value, len(encoded))
    with pytest.raises(ValueError):
        quic.encode_varint(2**62)


def test_version_table() -> None:
    assert quic.VERSIONS[QUIC_DRAFT_29].initial_salt.hex() == (
        "afbfec289993d24c9e9786f19c6111e04390a899"
    )
    assert quic.VERSIONS[QUIC_DRAFT_29].key_label == b"quic key"
    assert quic.VERSIONS[QUIC_V2].hp_label == b"quicv2 hp"
    assert quic.VERSIONS[QUIC_V2].type_bits(PacketType.INITIAL) == 0b01
    assert quic.VERSIONS[QUIC_V1].type_bits(PacketType.INITIAL) == 0b00
    assert quic.is_forcing_version_negotiation(0x1A2A3A4A)
    assert not quic.is_forcing_version_negotiation(QUIC_V1)


def test_import_clienthello_loads_no_cryptography() -> None:
    code = (
        "import sys, clienthello; "
        "print(any(m == 'cryptography' or m.startswith('cryptography.') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- reassembly -------------------------------------------------------------------


def fragments(message: bytes, rng: random.Random, pieces: int) -> list[tuple[int, bytes]]:
    """``message`` cut at random points, plus overlapping and repeated pieces."""
    cuts = sorted(rng.sample(range(1, len(message)), pieces - 1))
    bounds = [0, *cuts, len(message)]
    out = [(a, message[a:b]) for a, b in itertools.pairwise(bounds)]
    for _ in range(pieces // 2):
        a = rng.randrange(len(message))
        b = min(len(message), a + rng.randrange(1, 200))
        out.append((a, message[a:b]))  # overlaps pieces before and after
    out += rng.sample(out, min(3, len(out)))  # plain repeats
    rng.shuffle(out)
    return out


def datagrams_for(
    version: int, pieces: list[tuple[int, bytes]], packets: int, rng: random.Random
) -> list[bytes]:
    """The pieces as CRYPTO frames over ``packets`` Initials, with PING and PADDING between."""
    per = -(-len(pieces) // packets)
    out = []
    for number in range(packets):
        frames: list[bytes] = []
        for offset, data in pieces[number * per : (number + 1) * per]:
            frames.append(crypto_frame(offset, data))
            if rng.random() < 0.3:
                frames.append(PING_FRAME)
            if rng.random() < 0.3:
                frames.append(bytes(rng.randrange(1, 20)))
        out.append(build_initial(version, DCID, SCID, frames, packet_number=number))
    return out


@pytest.mark.parametrize("version", VERSIONS)
def test_hello_over_three_packets_shuffled_overlapping_duplicated(version: int) -> None:
    rng = random.Random(version)
    pieces = fragments(CHROME, rng, 12)
    datagrams = datagrams_for(version, pieces, 3, rng)
    reader = InitialReader()
    assert reader.feed(datagrams[0]) is None
    assert reader.feed(datagrams[1]) is None
    found = reader.feed(datagrams[2])
    assert found is not None
    assert found.hello == clienthello.parse_handshake(CHROME)
    assert found.hello.raw == CHROME
    assert (found.packets, found.crypto_frames, found.datagrams) == (3, len(pieces), (0, 1, 2))
    assert reader.feed(b"anything") is found  # done: later datagrams are not read
    # A reader kept after its hello (an analyzer's table) holds no stream bytes.
    assert reader.crypto_bytes == 0 and reader.partial() is found.hello


def test_later_frame_overlapping_an_earlier_one() -> None:
    message = hello_message("curl")
    frames = [
        crypto_frame(100, message[100:300]),
        crypto_frame(250, message[250:400]),  # overlaps the end of the first
        crypto_frame(50, message[50:120]),  # overlaps its start
        crypto_frame(0, message[0:60]),
        crypto_frame(90, message[90:350]),  # inside what is held
        crypto_frame(390, message[390:]),
    ]
    found = InitialReader().feed(build_initial(QUIC_V1, DCID, SCID, frames))
    assert found is not None and found.hello.raw == message


def test_different_bytes_at_the_same_offset() -> None:
    message = hello_message("curl")
    changed = message[:60] + bytes([message[60] ^ 1]) + message[61:80]
    frames = [crypto_frame(0, message[:70]), crypto_frame(40, changed[40:80])]
    with pytest.raises(MalformedHello) as caught:
        InitialReader().feed(build_initial(QUIC_V1, DCID, SCID, frames))
    assert caught.value.reason == "CRYPTO bytes 40..70 differ from an earlier frame"


def test_retransmission_with_other_ranges() -> None:
    message = hello_message("chromium")
    half = len(message) // 2
    reader = InitialReader()
    first = build_initial(QUIC_V1, DCID, SCID, [crypto_frame(0, message[:half])])
    # The retransmission cuts differently and repeats bytes already held.
    again = build_initial(
        QUIC_V1, DCID, SCID,
        [crypto_frame(half - 30, message[half - 30 :]), crypto_frame(0, message[:10])],
        packet_number=1,
    )  # fmt: skip
    assert reader.feed(first) is None
    found = reader.feed(again)
    assert found is not None and found.hello.raw == message
    assert found.datagrams == (0, 1)


def test_ack_connection_close_ping_padding_skipped() -> None:
    message = hello_message("openssl")
    frames = [
        quic.ack_frame(5, 10, 1, [(0, 2), (3, 1)]),
        quic.ack_frame(1, ecn=(1, 2, 3)),
        PING_FRAME,
        bytes(7),
        crypto_frame(0, message),
        quic.connection_close_frame(0x0A, 0x06, b"later"),
    ]
    found = InitialReader().feed(build_initial(QUIC_V1, DCID, SCID, frames))
    assert found is not None and found.hello.raw == message


# -- datagrams: coalescing, padding, DCID changes, Retry --------------------------


def long_packet(version: int, packet_type: PacketType, body: bytes) -> bytes:
    """An unprotected long-header packet of ``packet_type`` (for 0-RTT/Handshake filler)."""
    bits = quic.VERSIONS[version].type_bits(packet_type)
    return (
        bytes([0xC0 | bits << 4 | 3]) + version.to_bytes(4, "big")
        + bytes([len(DCID)]) + DCID + bytes([len(SCID)]) + SCID
        + quic.encode_varint(len(body)) + body
    )  # fmt: skip


@pytest.mark.parametrize("version", VERSIONS)
def test_coalesced_initial_and_zero_rtt_and_padding(version: int) -> None:
    message = hello_message("curl")
    half = len(message) // 2
    initial = build_initial(version, DCID, SCID, [crypto_frame(0, message[:half])], pad_to=0)
    second = build_initial(
        version, DCID, SCID, [crypto_frame(half, message[half:])], packet_number=1, pad_to=0
    )
    zero_rtt = long_packet(version, PacketType.ZERO_RTT, bytes(range(200)))
    datagram = initial + zero_rtt + second + bytes(300)
    found = InitialReader().feed(datagram)
    assert found is not None and found.hello.raw == message
    assert (found.packets, found.datagrams) == (2, (0,))


def test_trailing_garbage_after_the_last_packet_is_ignored() -> None:
    message = hello_message("curl")
    initial = build_initial(QUIC_V1, DCID, SCID, [crypto_frame(0, message)], pad_to=0)
    for tail in (bytes(900), b"\x40" + bytes(40), b"\xc0\x00\x00\x00\x01\x30", b"\xff" * 3):
        found = InitialReader().feed(initial + tail)
        assert found is not None and found.hello.raw == message


def test_coalesced_initial_with_another_dcid_is_skipped() -> None:
    message = hello_message("curl")
    first = build_initial(QUIC_V1, DCID, SCID, [crypto_frame(0, message[:100])], pad_to=0)
    other = build_initial(QUIC_V1, b"x" * 8, SCID, [crypto_frame(100, b"?" * 50)], pad_to=0)
    reader = InitialReader()
    assert reader.feed(first + other) is None
    rest = build_initial(QUIC_V1, DCID, SCID, [crypto_frame(100, message[100:])], packet_number=1)
    found = reader.feed(rest)
    assert found is not None and found.hello.raw == message


def test_client_switches_dcid_keys_stay() -> None:
    message = CHROME
    server_cid = b"\x51" * 5
    first = build_initial(QUIC_V1, DCID, SCID, [crypto_frame(0, message[:1000])])
    # After the server's first Initial the client sends to the server's CID, with
    # the keys of its original DCID (RFC 9001 §5.2).
    second = build_initial(
        QUIC_V1, server_cid, SCID, [crypto_frame(1000, message[1000:])],
        packet_number=1, original_destination_cid=DCID,
    )  # fmt: skip
    reader = InitialReader()
    assert reader.feed(first) is None
    found = reader.feed(second)
    assert found is not None and found.hello.raw == message
    assert found.original_destination_connection_id == DCID
    assert found.destination_connection_id == DCID and not found.retry_seen


def _second_hello() -> bytes:
    """The hello after a HelloRetryRequest: Chrome's, its key shares replaced by one P-256."""
    body = CHROME[4:]
    pos = 2 + 32
    pos += 1 + body[pos]  # legacy_session_id
    pos += 2 + int.from_bytes(body[pos : pos + 2], "big")  # cipher_suites
    pos += 1 + body[pos]  # legacy_compression_methods
    head, exts, out = body[:pos], body[pos + 2 :], b""
    while exts:
        etype, elen = int.from_bytes(exts[:2], "big"), int.from_bytes(exts[2:4], "big")
        data = exts[4 : 4 + elen]
        if etype == 51:  # key_share: client_shares with one secp256r1 entry
            data = b"\x00\x45\x00\x17\x00\x41\x04" + bytes(range(64))
        out += exts[:2] + len(data).to_bytes(2, "big") + data
        exts = exts[4 + elen :]
    body = head + len(out).to_bytes(2, "big") + out
    return b"\x01" + len(body).to_bytes(3, "big") + body


def test_second_hello_after_hello_retry_request() -> None:
    """A HelloRetryRequest's answer: further on in the same CRYPTO stream, same keys."""
    second = _second_hello()
    assert clienthello.parse_handshake(second).key_share_groups == (23,)
    server_cid = b"\x51" * 5
    reader = InitialReader()
    with pytest.raises(ValueError):
        reader.after_hello()
    found = reader.feed(build_initial(QUIC_V1, DCID, SCID, [crypto_frame(0, CHROME)]))
    assert found is not None and not found.after_hello_retry
    more = reader.after_hello()
    base = len(CHROME)
    cut = len(second) // 2

    def later(pn: int, frames: list[bytes], dcid: bytes = server_cid) -> bytes:
        return build_initial(
            QUIC_V1, dcid, SCID, frames, packet_number=pn, original_destination_cid=DCID
        )

    # An ACK alone, then the first hello's bytes again (a retransmission): nothing new.
    assert more.feed(later(1, [quic.ack_frame(0)])) is None and more.crypto_bytes == 0
    assert more.feed(later(2, [crypto_frame(0, CHROME[:500])])) is None
    assert more.crypto_bytes == 0
    # Another connection's Initial does not open with this connection's keys.
    stranger = build_initial(QUIC_V1, b"\x66" * 8, SCID, [crypto_frame(0, CHROME)])
    with pytest.raises(MalformedHello, match="not decryptable"):
        more.feed(stranger)
    # The second hello in two Initials, its end first; one frame straddles both hellos.
    assert more.feed(later(3, [PING_FRAME, crypto_frame(base + cut, second[cut:])])) is None
    assert more.crypto_bytes == len(second)
    straddling = CHROME[-20:] + second[:cut]
    again = more.feed(later(4, [quic.ack_frame(0), crypto_frame(base - 20, straddling)]))
    assert again is not None and again.after_hello_retry
    assert again.hello.raw == second and again.hello.server_name == "lh3.google.com"
    assert again.original_destination_connection_id == DCID and again.version == QUIC_V1
    assert again.packets == 4 and again.datagrams == (3, 4)  # the stranger opened nothing
    assert more.feed(later(5, [crypto_frame(base, second)])) is again  # done: nothing read
    # A Retry can no longer re-key the reader.
    retry = quic.build_retry(QUIC_V1, DCID, server_cid, b"\x77" * 8, b"token")
    assert not more.feed_server(retry)
    fresh = reader.after_hello()
    fresh.retry(b"\x77" * 8)  # ignored: the keys stay those of the first hello
    assert fresh.feed(later(6, [crypto_frame(base, second)])) is not None


def _retry_flow(version: int) -> tuple[list[bytes], bytes, bytes]:
    """A first Initial with half a hello, the server's Retry, then the whole hello again."""
    message = CHROME
    new_dcid = b"\x77" * 10
    before = build_initial(version, DCID, SCID, [crypto_frame(0, message[:900])])
    retry = quic.build_retry(version, DCID, SCID, new_dcid, b"retry-token")
    after = [
        build_initial(
            version, new_dcid, SCID, [crypto_frame(0, message[:1100])], token=b"retry-token",
            packet_number=1,
        ),
        build_initial(
            version, new_dcid, SCID, [crypto_frame(1100, message[1100:])],
            token=b"retry-token", packet_number=2,
        ),
    ]  # fmt: skip
    return [before, *after], retry, new_dcid


def _check_after_retry(found: quic.QuicClientHello | None, new_dcid: bytes, v: int) -> None:
    assert found is not None and found.hello.raw == CHROME
    assert found.retry_seen and found.version == v
    assert found.original_destination_connection_id == DCID
    assert found.destination_connection_id == new_dcid
    assert (found.token, found.token_seen) == (b"retry-token", True)
    assert (found.packets, found.datagrams) == (3, (1, 2))


@pytest.mark.parametrize("version", VERSIONS)
def test_retry_told_by_feed_server(version: int) -> None:
    client, retry, new_dcid = _retry_flow(version)
    reader = InitialReader()
    assert reader.feed(client[0]) is None
    tampered = retry[:-1] + bytes([retry[-1] ^ 1])
    assert not reader.feed_server(tampered)  # a bad integrity tag: discarded (RFC 9001 §5.8)
    assert not reader.feed_server(b"\x40" + bytes(30))
    assert reader.feed_server(retry)
    assert reader.feed(client[1]) is None
    _check_after_retry(reader.feed(client[2]), new_dcid, version)


@pytest.mark.parametrize("version", VERSIONS)
def test_retry_told_by_call(version: int) -> None:
    client, _, new_dcid = _retry_flow(version)
    reader = InitialReader()
    assert reader.feed(client[0]) is None
    reader.retry(new_dcid)
    assert reader.feed(client[1]) is None
    _check_after_retry(reader.feed(client[2]), new_dcid, version)


@pytest.mark.parametrize("version", VERSIONS)
def test_retry_detected_from_the_new_dcid_and_token(version: int) -> None:
    client, _, new_dcid = _retry_flow(version)
    reader = InitialReader()
    assert reader.feed(client[0]) is None
    assert reader.feed(client[1]) is None
    _check_after_retry(reader.feed(client[2]), new_dcid, version)


def test_zero_rtt_only_datagram_is_skipped_after_an_initial() -> None:
    message = hello_message("curl")
    reader = InitialReader()
    assert reader.feed(build_initial(QUIC_V1, DCID, SCID, [crypto_frame(0, message[:50])])) is None
    assert reader.feed(long_packet(QUIC_V1, PacketType.ZERO_RTT, bytes(100))) is None
    assert reader.feed(b"\x41" + bytes(50)) is None
    last = build_initial(QUIC_V1, DCID, SCID, [crypto_frame(50, message[50:])], packet_number=1)
    found = reader.feed(last)
    assert found is not None and found.datagrams == (0, 3)


# -- errors -----------------------------------------------------------------------


def _initial_with(frames: list[bytes]) -> bytes:
    return build_initial(QUIC_V1, DCID, SCID, frames)


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


VN = bytes.fromhex("ea00000000089aac5a49ba87a84908f92f4336fa951ba14547471600000001")

NOT_QUIC = [
    ("empty", b"", "empty datagram"),
    ("short header", b"\x40" + bytes(40), "first bit clear: not a QUIC long-header packet"),
    ("TLS record", load("curl"), "first bit clear: not a QUIC long-header packet"),
    ("version negotiation", VN, "QUIC version negotiation packet"),
    (
        "forcing VN 0x1a2a3a4a",
        b"\xc0\x1a\x2a\x3a\x4a" + bytes(1200),
        "QUIC version 0x1a2a3a4a reserved to force version negotiation",
    ),
    (
        "forcing VN 0xbabababa",
        b"\xcf\xba\xba\xba\xba" + bytes(1200),
        "QUIC version 0xbabababa reserved to force version negotiation",
    ),
    ("gQUIC Q050", b"\xc3Q050" + bytes(1200), "QUIC version 0x51303530 unknown to this reader"),
    ("fixed bit clear", b"\x80" + RFC9001_CLIENT_INITIAL[1:], "QUIC fixed bit clear"),
    ("Handshake", long_packet(QUIC_V1, PacketType.HANDSHAKE, bytes(50)),
     "QUIC Handshake packet, not an Initial"),
    ("0-RTT", long_packet(QUIC_V1, PacketType.ZERO_RTT, bytes(50)),
     "QUIC 0-RTT packet, not an Initial"),
    ("Retry", RFC9001_RETRY, "QUIC Retry packet, not an Initial"),
    ("ServerHello in CRYPTO", _initial_with([crypto_frame(0, b"\x02\x00\x00\x05hello")]),
     "CRYPTO stream starts with handshake type 2, not ClientHello"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("datagram", "reason"), [c[1:] for c in NOT_QUIC], ids=[c[0] for c in NOT_QUIC]
)
def test_not_quic(datagram: bytes, reason: str) -> None:
    with pytest.raises(NotTLS) as caught:
        InitialReader().feed(datagram)
    assert caught.value.reason == reason


MALFORMED = [
    ("truncated long header", RFC9001_CLIENT_INITIAL[:4], MalformedHello,
     "datagram 0 packet 0 header", "4 byte(s), a long header needs 7"),
    ("truncated DCID", RFC9001_CLIENT_INITIAL[:9], MalformedHello,
     "datagram 0 packet 0 destination_cid", "length 8 overruns the datagram (3 bytes left)"),
    ("DCID over 20", RFC9001_CLIENT_INITIAL[:5] + b"\x15" + bytes(1000), MalformedHello,
     "datagram 0 packet 0 destination_cid", "length 21 exceeds 20"),
    ("Length overruns", RFC9001_CLIENT_INITIAL[:-1], MalformedHello,
     "datagram 0 packet 0 length", "Length 1182 overruns the datagram (1181 bytes left)"),
    ("payload flipped", _flip(RFC9001_CLIENT_INITIAL, 600), MalformedHello,
     "datagram 0 packet 0 payload", "not decryptable with the Initial keys"),
    ("tag flipped", _flip(RFC9001_CLIENT_INITIAL, 1199), MalformedHello,
     "datagram 0 packet 0 payload", "not decryptable with the Initial keys"),
    ("STREAM frame", _initial_with([b"\x08\x00\x00"]), MalformedHello,
     "datagram 0 packet 0 frame 0", "frame type 0x08 not allowed in an Initial"),
    ("1-RTT CONNECTION_CLOSE", _initial_with([b"\x1d\x00\x00"]), MalformedHello,
     "datagram 0 packet 0 frame 0", "frame type 0x1d not allowed in an Initial"),
    ("CRYPTO overruns", _initial_with([b"\x06\x00\x7f\xff" + bytes(10)]), MalformedHello,
     "datagram 0 packet 0 frame 0 CRYPTO data",
     "length 16383 overruns the packet (1154 bytes left)"),
    ("ACK range count", _initial_with([b"\x02\x00\x00\x80\xff\xff\xff\x00"]), MalformedHello,
     "datagram 0 packet 0 frame 0 ACK range_count", "16777215 ranges cannot fit in 1150 bytes"),
    ("CRYPTO at 2**62", _initial_with([b"\x06\xff" + bytes(7) + b"\x01\x01"]), HelloTooLarge,
     "datagram 0 packet 0 CRYPTO frame",
     "CRYPTO data up to offset 4539628424389459969 exceeds max_crypto_bytes 65536"),
    ("hello too long", _initial_with([crypto_frame(0, b"\x01\x01\x00\x00")]), HelloTooLarge,
     "datagram 0 packet 0 CRYPTO frame",
     "ClientHello of 65540 bytes exceeds max_crypto_bytes 65536"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("datagram", "error", "field", "reason"),
    [c[1:] for c in MALFORMED],
    ids=[c[0] for c in MALFORMED],
)
def test_malformed(datagram: bytes, error: type[MalformedHello], field: str, reason: str) -> None:
    with pytest.raises(error) as caught:
        InitialReader().feed(datagram)
    assert type(caught.value) is error
    assert (caught.value.field, caught.value.reason) == (field, reason)


def test_malformed_hello_inside_crypto() -> None:
    bad = b"\x01\x00\x00\x05\x03\x03\x00\x00\x00"  # a body too short for random
    with pytest.raises(MalformedHello):
        InitialReader().feed(_initial_with([crypto_frame(0, bad)]))


def test_max_packets() -> None:
    reader = InitialReader(max_packets=4)
    message = hello_message("curl")
    for number in range(4):
        frames = [crypto_frame(number, message[number : number + 1])]
        assert reader.feed(build_initial(QUIC_V1, DCID, SCID, frames, packet_number=number)) is None
    with pytest.raises(HelloTooLarge) as caught:
        reader.feed(build_initial(QUIC_V1, DCID, SCID, [PING_FRAME], packet_number=4))
    assert caught.value.reason == "5 packets without a complete ClientHello (max_packets 4)"


def test_max_crypto_bytes() -> None:
    reader = InitialReader(max_crypto_bytes=1000)
    with pytest.raises(HelloTooLarge):
        reader.feed(_initial_with([crypto_frame(0, CHROME[:900])]))


def test_is_client_initial() -> None:
    assert quic.is_client_initial(RFC9001_CLIENT_INITIAL)
    assert quic.is_client_initial(RFC9369_CLIENT_INITIAL)
    assert quic.is_client_initial(memoryview(RFC9001_CLIENT_INITIAL))
    for datagram in (
        b"", VN, RFC9001_RETRY, b"\x40" + bytes(40), RFC9001_CLIENT_INITIAL[:-1],
        RFC9001_CLIENT_INITIAL[:30], b"\xc0\x1a\x2a\x3a\x4a" + bytes(1200),
        long_packet(QUIC_V1, PacketType.HANDSHAKE, bytes(50)),
        long_packet(QUIC_V2, PacketType.ZERO_RTT, bytes(50)),
        b"\x80" + RFC9001_CLIENT_INITIAL[1:], load("curl"),
    ):  # fmt: skip
        assert not quic.is_client_initial(datagram)


def test_pull_quic_header_version_negotiation_and_short() -> None:
    header = quic.pull_quic_header(VN)
    assert header.packet_type is PacketType.VERSION_NEGOTIATION
    assert header.supported_versions == (0x45474716, QUIC_V1)
    short = quic.pull_quic_header(b"\x41" + DCID + bytes(30), short_cid_length=8)
    assert (short.is_long_header, short.destination_cid) == (False, DCID)


# -- properties -------------------------------------------------------------------


def _only_library_errors(datagrams: list[bytes], reader: InitialReader | None = None) -> None:
    reader = reader or InitialReader()
    for datagram in datagrams:
        try:
            reader.feed(datagram)
        except ClientHelloError:
            return
        reader.feed_server(datagram)
        quic.is_client_initial(datagram)
        with contextlib.suppress(MalformedHello):
            quic.pull_quic_header(datagram)


@FUZZ
@given(st.lists(st.binary(max_size=1500), min_size=1, max_size=4))
def test_random_datagrams_raise_only_library_errors(datagrams: list[bytes]) -> None:
    _only_library_errors(datagrams)


@FUZZ
@given(st.binary(min_size=0, max_size=60), st.sampled_from([QUIC_V1, QUIC_V2]))
def test_random_bytes_after_a_real_header_raise_only_library_errors(
    tail: bytes, version: int
) -> None:
    _only_library_errors([RFC_CLIENT_INITIALS[version][:26] + tail])


@FUZZ
@given(
    st.sampled_from([RFC9001_CLIENT_INITIAL, RFC9369_CLIENT_INITIAL]),
    st.lists(st.integers(0, 1200 * 8 - 1), min_size=1, max_size=4),
)
def test_bit_flipped_initials_raise_only_library_errors(packet: bytes, bits: list[int]) -> None:
    data = bytearray(packet)
    for bit in bits:
        data[bit // 8] ^= 1 << (bit % 8)
    _only_library_errors([bytes(data)])


@FUZZ
@given(st.lists(st.binary(max_size=1300), min_size=1, max_size=4))
def test_random_datagrams_after_an_initial_raise_only_library_errors(
    datagrams: list[bytes],
) -> None:
    # Once an Initial is read, other paths run: skipped datagrams, Retry checks, re-keying.
    reader = InitialReader()
    assert reader.feed(_initial_with([crypto_frame(0, CHROME[:500])])) is None
    _only_library_errors(datagrams, reader)


@FUZZ
@given(st.lists(st.binary(max_size=1300), min_size=1, max_size=4), st.binary(max_size=600))
def test_random_input_after_a_hello_raises_only_library_errors(
    datagrams: list[bytes], crypto: bytes
) -> None:
    # The reader of a second hello: random datagrams, and random CRYPTO data that opens.
    reader = InitialReader()
    assert reader.feed(_initial_with([crypto_frame(0, CHROME)])) is not None
    more = reader.after_hello()
    later = build_initial(QUIC_V1, DCID, SCID, [crypto_frame(len(CHROME), crypto or b"\x01")])
    _only_library_errors([later, *datagrams], more)


def _unprotected_payload_fuzz(payload: bytes) -> None:
    """Arbitrary frames, properly encrypted: the frame parser sees attacker bytes."""
    with contextlib.suppress(ClientHelloError):
        InitialReader().feed(build_initial(QUIC_V1, DCID, SCID, [payload]))


@FUZZ
@given(st.binary(min_size=1, max_size=300))
def test_random_frames_raise_only_library_errors(payload: bytes) -> None:
    _unprotected_payload_fuzz(payload)


@FUZZ
@given(
    st.sampled_from(["chrome125", "chromium", "curl", "python"]),
    st.sampled_from(VERSIONS),
    st.randoms(use_true_random=False),
    st.integers(1, 30),
    st.integers(1, 4),
)
def test_any_fragmentation_gives_the_same_hello(
    name: str, version: int, rng: random.Random, pieces: int, packets: int
) -> None:
    message = hello_message(name)
    cut = fragments(message, rng, min(pieces, len(message) - 1))
    datagrams = datagrams_for(version, cut, packets, rng)
    reader = InitialReader()
    found = None
    for datagram in datagrams:
        found = reader.feed(datagram)
    assert found is not None
    assert found.hello == clienthello.parse_handshake(message)
    assert found.crypto_frames <= len(cut)


@FUZZ
@given(st.randoms(use_true_random=False), st.integers(1, 30), st.integers(1, 4))
def test_any_fragmentation_of_a_second_hello_gives_it(
    rng: random.Random, pieces: int, packets: int
) -> None:
    """After a HelloRetryRequest: the second hello's bytes in any order, some frames
    reaching back into the first hello's (resent), read from where the first ends."""
    first, second = CHROME, _second_hello()
    reader = InitialReader()
    assert reader.feed(build_initial(QUIC_V1, DCID, SCID, [crypto_frame(0, first)])) is not None
    base = len(first)
    cut = [(base + o, d) for o, d in fragments(second, rng, min(pieces, len(second) - 1))]
    stream = first + second
    back = rng.randrange(1, 60)
    cut.append((base - back, stream[base - back : base + rng.randrange(0, 100)]))
    more = reader.after_hello()
    found = None
    for datagram in datagrams_for(QUIC_V1, cut, packets, rng):
        found = more.feed(datagram)
    assert found is not None and found.after_hello_retry
    assert found.hello == clienthello.parse_handshake(second)


# -- aioquic ----------------------------------------------------------------------


def _aioquic_client(version: int, large_hello: bool = False) -> tuple[object, list[bytes]]:
    pytest.importorskip("aioquic", reason="aioquic is not installed (pip install aioquic)")
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection

    config = QuicConfiguration(
        is_client=True,
        alpn_protocols=["h3"],
        server_name="router.example",
        quantum_readiness_test=large_hello,
    )
    config.supported_versions = [version]
    connection = QuicConnection(configuration=config)
    connection.connect(("127.0.0.1", 4433), now=0.0)
    return connection, [data for data, _ in connection.datagrams_to_send(now=0.0)]


@pytest.mark.parametrize("version", [QUIC_V1, QUIC_V2])
def test_aioquic_initial_is_read(version: int) -> None:
    connection, datagrams = _aioquic_client(version)
    reader = InitialReader()
    found = None
    for datagram in datagrams:
        assert quic.is_client_initial(datagram)
        found = reader.feed(datagram)
    assert found is not None
    assert found.hello.server_name == "router.example"
    assert found.hello.alpn_protocols == (b"h3",)
    assert found.version == version
    assert found.source_connection_id == connection.host_cid  # type: ignore[attr-defined]
    assert found.original_destination_connection_id == (
        connection.original_destination_connection_id  # type: ignore[attr-defined]
    )
    assert found.hello.quic_transport_parameters is not None


def _terminated(connection: object, datagram: bytes) -> object:
    from aioquic.quic.events import ConnectionTerminated

    conn: object = connection
    conn.receive_datagram(datagram, ("127.0.0.1", 4433), now=0.1)  # type: ignore[attr-defined]
    timer = conn.get_timer()  # type: ignore[attr-defined]
    if timer is not None:
        conn.handle_timer(now=timer)  # type: ignore[attr-defined]
    while (event := conn.next_event()) is not None:  # type: ignore[attr-defined]
        if isinstance(event, ConnectionTerminated):
            return event
    return None


@pytest.mark.parametrize("version", [QUIC_V1, QUIC_V2])
def test_aioquic_client_closes_on_our_connection_close(version: int) -> None:
    connection, datagrams = _aioquic_client(version)
    found = InitialReader().feed(datagrams[0])
    assert found is not None
    refusal = quic.build_connection_close(
        found.version,
        found.original_destination_connection_id,
        found.source_connection_id,
        b"\x5e" * 8,
        quic.CRYPTO_ERROR_BASE + 112,  # unrecognized_name
        b"no route for router.example",
    )
    event = _terminated(connection, refusal)
    assert event is not None
    assert event.error_code == 0x170  # type: ignore[attr-defined]
    assert event.reason_phrase == "no route for router.example"  # type: ignore[attr-defined]


@pytest.mark.parametrize("version", [QUIC_V1, QUIC_V2])
def test_aioquic_client_follows_our_retry(version: int) -> None:
    # A hello too large for one datagram, so that the Retry comes in the middle of it.
    connection, datagrams = _aioquic_client(version, large_hello=True)
    assert len(datagrams) >= 2
    reader = InitialReader()
    assert reader.feed(datagrams[0]) is None
    odcid = reader.original_destination_connection_id
    assert odcid is not None
    scid = quic.pull_quic_header(datagrams[0]).source_cid
    new_dcid = b"\x33" * 8
    retry = quic.build_retry(version, odcid, scid, new_dcid, b"router-token")
    assert reader.feed_server(retry)
    connection.receive_datagram(retry, ("127.0.0.1", 4433), now=0.05)  # type: ignore[attr-defined]
    again = [d for d, _ in connection.datagrams_to_send(now=0.05)]  # type: ignore[attr-defined]
    found = None
    for datagram in again:
        found = reader.feed(datagram)
    assert found is not None and found.retry_seen
    assert found.original_destination_connection_id == odcid
    assert found.destination_connection_id == new_dcid
    assert found.token == b"router-token"
    assert found.hello.server_name == "router.example"
    assert found.datagrams == tuple(range(1, 1 + len(again)))


def test_partial_hello_holds_what_came_before_the_first_gap() -> None:
    message = hello_message("curl")
    full = clienthello.parse_handshake(message)
    ext = full.extension(0)  # server_name
    assert ext is not None
    cut = ext.offset + 4 + len(ext.data) + 10  # a little past the server_name extension
    reader = InitialReader()
    assert reader.partial() is None  # nothing yet
    frames = [crypto_frame(0, message[:cut]), crypto_frame(cut + 50, message[cut + 50 :])]
    assert reader.feed(build_initial(QUIC_V1, DCID, SCID, frames)) is None
    partial = reader.partial()
    assert partial is not None and not partial.complete
    assert partial.server_name == full.server_name
    assert partial.cipher_suites == full.cipher_suites
    assert isinstance(partial.error, clienthello.NeedMoreData)
    # A stream that does not start at offset 0 has nothing to show.
    late = InitialReader()
    assert late.feed(build_initial(QUIC_V1, DCID, SCID, [crypto_frame(100, message[100:])])) is None
    assert late.partial() is None
    # Once the gap is filled the whole hello comes, and partial() is that hello.
    found = reader.feed(
        build_initial(QUIC_V1, DCID, SCID, [crypto_frame(cut, message[cut:])], packet_number=1)
    )
    assert found is not None and reader.partial() == found.hello == full


def test_version_names_are_the_ones_records_and_router_logs_use() -> None:
    assert quic.version_name(quic.QUIC_V1) == "v1"
    assert quic.version_name(quic.QUIC_V2) == "v2"
    assert quic.version_name(quic.QUIC_DRAFT_29) == "draft-29"
    assert quic.version_name(0x1A2A3A4A) == "0x1a2a3a4a"  # forcing negotiation: no name
