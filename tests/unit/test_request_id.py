"""Signed request ids: read back by any process with the key, by nobody without it."""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.config.model import Variant
from proxy.records.request_id import (
    CANDIDATE,
    NOT_COMPARED,
    SHARES,
    STABLE,
    VERSION,
    Minter,
    Reader,
    Served,
    assignment,
    key_of,
    rollout_digest,
)
from proxy.routing.decide import Decision, Reason

KEY = key_of("fleet secret")


def test_an_id_reads_back_as_route_variant_rollout_time_and_share_in_another_process():
    minter = Minter(KEY)
    label = minter.label("chat.v1", "chat.v1|http://c:1|salt")
    request_id = minter.mint(label, 1764540000.123456, CANDIDATE, 16384).decode()
    served = Reader(KEY).read(request_id)  # a Reader of its own: nothing shared but the key
    assert served is not None
    assert (served.route, served.variant) == ("chat.v1", Variant.CANDIDATE)
    assert served.rollout == rollout_digest("chat.v1|http://c:1|salt")
    assert served.at == 1764540000.0  # whole seconds
    assert served.share == 16384 / 65535
    assert request_id.isascii() and "=" not in request_id and len(request_id) < 80


@pytest.mark.parametrize(
    ("code", "variant"),
    [(STABLE, Variant.STABLE), (CANDIDATE, Variant.CANDIDATE), (NOT_COMPARED, None)],
)
@pytest.mark.parametrize("share", [0, 1, 6554, 32768, 65534, 65535])
def test_the_code_and_the_share_round_trip(code, variant, share):
    minter = Minter(KEY)
    request_id = minter.mint(minter.label("r", "i"), 5.0, code, share).decode()
    served = Reader(KEY).read(request_id)
    assert served is not None
    assert (served.variant, served.share) == (variant, share / SHARES)


def test_the_codes_and_the_share_unit_are_pinned():
    assert (ord("s"), ord("c"), ord("n")) == (STABLE, CANDIDATE, NOT_COMPARED)
    assert SHARES == 65535 and VERSION == 4


def test_a_requests_weight_is_the_other_variants_share():
    assert Served("r", Variant.CANDIDATE, b"", 0.0, 0.2).weight == pytest.approx(0.8)
    assert Served("r", Variant.STABLE, b"", 0.0, 0.2).weight == 0.2
    assert Served("r", None, b"", 0.0, 0.0).weight == 0.0  # not compared: weighs nothing


def decision(variant: Variant, reason: Reason, share: float) -> Decision:
    return Decision(variant, reason, share)


def test_only_a_request_assigned_at_random_and_not_ejected_is_compared():
    assert assignment(decision(Variant.CANDIDATE, Reason.BUCKET, 0.25), False) == (
        CANDIDATE,
        round(0.25 * 65535),
    )
    assert assignment(decision(Variant.STABLE, Reason.RANDOM, 0.1), False) == (STABLE, 6554)
    assert assignment(decision(Variant.STABLE, Reason.BUCKET, 0.25), True) == (NOT_COMPARED, 0)
    for reason in (Reason.PINNED, Reason.NO_KEY, Reason.ROLLOUT):
        assert assignment(decision(Variant.CANDIDATE, reason, 0.5), False) == (NOT_COMPARED, 0)
    for share in (0.0, 1.0):  # everyone one way: nothing assigned at random
        assert assignment(decision(Variant.STABLE, Reason.BUCKET, share), False) == (
            NOT_COMPARED,
            0,
        )


def test_an_id_says_its_request_was_not_compared():
    minter = Minter(KEY)
    code, share = assignment(decision(Variant.CANDIDATE, Reason.PINNED, 0.5), False)
    served = Reader(KEY).read(minter.mint(minter.label("r", "i"), 5.0, code, share).decode())
    assert served is not None and served.variant is None and served.share == 0.0


def test_the_signed_part_is_made_once_a_second_and_each_id_has_a_nonce_of_its_own():
    minter = Minter(KEY)
    label = minter.label("r", "i")
    first, second = minter.mint(label, 10.1, STABLE, 100), minter.mint(label, 10.9, STABLE, 100)
    signed = first.partition(b".")[0]
    assert first != second and second.partition(b".")[0] == signed  # one signed part
    assert minter.mint(label, 11.0, STABLE, 100).partition(b".")[0] != signed
    reader = Reader(KEY)
    assert reader.read(first.decode()) == reader.read(second.decode()) is not None


def test_no_new_id_can_be_made_from_one_that_was_served():
    """A client holding its ids cannot make more (to report one request many times): the nonce
    is checked under the key, bound to its signed part, and an id has one spelling only."""
    minter = Minter(KEY)
    label = minter.label("r", "i")
    served, later = minter.mint(label, 10.0, STABLE, 100), minter.mint(label, 11.0, STABLE, 100)
    signature, nonce, check = served.decode().split(".")
    reader = Reader(KEY)
    assert reader.read(served.decode()) is not None
    counter = nonce[:8] + str(int(nonce[8:]) + 1)  # the next request's nonce, unchecked
    moved = later.decode().split(".")[0]  # this nonce and check on another signed part
    standard = base64.b64encode(base64.urlsafe_b64decode(signature)).decode()
    for forged in (
        f"{signature}.{counter}.{check}",
        f"{signature}.{nonce}1.{check}",
        f"{moved}.{nonce}.{check}",
        f"{signature}.{nonce}.{check.upper()}",
        f"{signature}.{nonce}.{check[:-1]}",
        f"{signature}.{nonce}.{check}0",
        f"{signature}.{nonce}",
        f"{signature}====.{nonce}.{check}",
        f"{signature}.{nonce}.{check}.{check}",
    ):
        assert reader.read(forged) is None, forged
    if standard != signature:  # ('+' or '/' where base64url has '-' or '_')
        assert reader.read(f"{standard}.{nonce}.{check}") is None


def test_the_signed_part_is_made_per_variant_and_share_within_a_second():
    minter = Minter(KEY)
    label = minter.label("r", "i")
    ids = [
        minter.mint(label, 10.0, code, share)
        for code, share in [(STABLE, 100), (CANDIDATE, 100), (STABLE, 101), (NOT_COMPARED, 0)]
    ]
    parts = {request_id.partition(b".")[0] for request_id in ids}
    assert len(parts) == 4
    again = minter.mint(label, 10.5, CANDIDATE, 100).partition(b".")[0]
    assert again in parts
    reader = Reader(KEY)
    for request_id in ids:
        assert reader.read(request_id.decode()) is not None


def test_ids_are_unique_and_opaque():
    minters = [Minter(KEY), Minter(KEY)]  # two processes (workers) with one key
    label = minters[0].label("r", "r|x")
    ids = {m.mint(label, 1.0, STABLE, 1) for m in minters for _ in range(5000)}
    assert len(ids) == 10_000


def test_without_the_key_an_id_can_be_neither_made_nor_altered():
    minter = Minter(KEY)
    signature, _, tag = minter.mint(minter.label("r", "i"), 5.0, STABLE, 6554).partition(b".")
    raw = bytearray(base64.urlsafe_b64decode(signature))

    def as_id(data: bytes) -> str:
        return (base64.urlsafe_b64encode(data) + b"." + tag).decode()

    assert Reader(KEY).read(as_id(bytes(raw))) is not None
    assert Reader(key_of("another secret")).read(as_id(bytes(raw))) is None
    altered = bytearray(raw)
    altered[1] = ord("c")  # claim the candidate was assigned it
    assert Reader(KEY).read(as_id(bytes(altered))) is None
    altered = bytearray(raw)
    altered[12] ^= 1  # claim another share (another weight)
    assert Reader(KEY).read(as_id(bytes(altered))) is None
    forged = Minter(key_of("guess")).mint(Minter(KEY).label("r", "i"), 5.0, CANDIDATE, 6554)
    assert Reader(KEY).read(forged.decode()) is None


@given(st.text(max_size=120))
def test_anything_else_reads_as_no_id(text):
    assert Reader(KEY).read(text) is None


def signed_id(signed: bytes, nonce: bytes = b"0123abcd7") -> str:
    """An id made by hand around `signed`, with a correct MAC and nonce check under KEY."""
    mac = hashlib.blake2b(signed, key=KEY, digest_size=10).digest()
    check = hashlib.blake2b(mac + nonce, key=KEY, digest_size=6, person=b"grayscale-nonce")
    encoded = base64.urlsafe_b64encode(signed + mac).decode()
    return f"{encoded}.{nonce.decode('latin-1')}.{check.hexdigest()}"


def signed_part(
    *,
    version: int = 4,
    variant: bytes = b"c",
    second: int = 7,
    share: int = 0x1234,
    name: bytes = b"r",
    length: int = -1,
) -> bytes:
    signed = bytes((version,)) + variant + second.to_bytes(5, "big") + b"\x00\x01\x02\x03"
    signed += share.to_bytes(2, "big")
    signed += bytes((len(name) if length < 0 else length,)) + name
    return signed + bytes(-(len(signed) + 10) % 3)


def test_what_the_reader_takes_apart_is_pinned_field_by_field():
    reader = Reader(KEY)
    served = reader.read(signed_id(signed_part(second=2**32 + 5, share=0xFFFE, name=b"chat")))
    assert served is not None
    assert (served.route, served.variant, served.rollout) == (
        "chat",
        Variant.CANDIDATE,
        b"\x00\x01\x02\x03",
    )
    assert served.at == 2**32 + 5  # all five bytes of the time
    assert served.share == 0xFFFE / 65535  # both bytes of the share, high byte first
    high_byte = reader.read(signed_id(signed_part(share=0x0100)))
    assert high_byte is not None and high_byte.share == 256 / 65535
    stable = reader.read(signed_id(signed_part(variant=b"s")))
    assert stable is not None and stable.variant is Variant.STABLE
    not_compared = reader.read(signed_id(signed_part(variant=b"n")))
    assert not_compared is not None and not_compared.variant is None
    for wrong in (
        signed_part(version=3),
        signed_part(version=5),
        signed_part(variant=b"x"),
        signed_part(name=b"chat", length=9),  # names more bytes than it holds
        signed_part(name=b"\xff\xfe"),
    ):
        assert reader.read(signed_id(wrong)) is None, wrong
    exact = signed_part(name=b"ab", length=2)
    assert reader.read(signed_id(exact)) is not None
    empty = signed_part(name=b"", length=0)  # the shortest signed part: a route named ""
    shortest = reader.read(signed_id(empty))
    assert shortest is not None and shortest.route == ""
    assert reader.read(signed_id(empty[:13])) is None  # shorter than the fixed 14 bytes


def test_the_ids_shape_is_checked_before_its_signature():
    reader = Reader(KEY)
    good = signed_id(signed_part())
    signature, nonce, check = good.split(".")
    assert reader.read(signature) is None  # no dot
    assert reader.read(f"{signature}.{check}") is None  # no nonce
    assert reader.read(f"{signature[1:]}.{nonce}.{check}") is None  # not whole base64 groups
    assert reader.read(f"{signature}..{check}") is None  # an empty nonce
    assert reader.read(signed_id(signed_part(), b"n.o.n.c.e")) is not None  # (the check's dot)
    longest = signed_id(signed_part(), b"9" * (512 - len(good) + len(nonce)))
    assert len(longest) == 512 and reader.read(longest) is not None
    longer = signed_id(signed_part(), b"9" * (513 - len(good) + len(nonce)))
    assert reader.read(longer) is None  # longer than any id
    assert reader.read(signed_id(signed_part(), "é".encode())) is None  # ASCII only


def test_the_key_and_the_ids_layout_are_pinned():
    assert (
        key_of("s").hex()[:16]
        == hashlib.blake2b(b"s", person=b"grayscale-rid", digest_size=32).hexdigest()[:16]
    )
    assert len(key_of("s")) == 32 and key_of("s") != hashlib.blake2b(b"s", digest_size=32).digest()
    minter = Minter(KEY)
    first = minter.mint(minter.label("r", "i"), 1.0, CANDIDATE, 0x0102)
    signature, nonce, check = first.split(b".")
    assert len(nonce) == 9 and nonce.endswith(b"0")  # 8 hex digits, then the counter from 0
    mac = base64.urlsafe_b64decode(signature)[-10:]
    keyed = hashlib.blake2b(mac + nonce, key=KEY, digest_size=6, person=b"grayscale-nonce")
    assert check == keyed.hexdigest().encode()  # 12 hex digits, lower case
    raw = base64.urlsafe_b64decode(signature)
    assert raw[:-10] == (
        bytes((4,)) + b"c" + (1).to_bytes(5, "big") + rollout_digest("i") + b"\x01\x02\x01r"
    ) + bytes(2)  # 15 bytes and the MAC's 10: two zero bytes to whole base64 groups
    long_name = "n" * 300
    served = Reader(KEY).read(minter.mint(minter.label(long_name, "i"), 1.0, STABLE, 0).decode())
    assert served is not None and served.route == "n" * 255
