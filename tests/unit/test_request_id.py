"""Signed request ids: read back by any process with the key, by nobody without it."""

from __future__ import annotations

import base64
import hashlib

from hypothesis import given
from hypothesis import strategies as st

from proxy.config.model import Variant
from proxy.request_id import Minter, Reader, key_of, rollout_digest

KEY = key_of("fleet secret")


def test_an_id_reads_back_as_route_variant_rollout_and_time_in_another_process():
    minter = Minter(KEY)
    label = minter.label("chat.v1", Variant.CANDIDATE, "chat.v1|http://c:1|salt")
    request_id = minter.mint(label, 1764540000.123456).decode()
    served = Reader(KEY).read(request_id)  # a Reader of its own: nothing shared but the key
    assert served is not None
    assert (served.route, served.variant) == ("chat.v1", Variant.CANDIDATE)
    assert served.rollout == rollout_digest("chat.v1|http://c:1|salt")
    assert served.at == 1764540000.0  # whole seconds
    assert request_id.isascii() and "=" not in request_id and len(request_id) < 80


def test_the_signed_part_is_made_once_a_second_and_the_nonce_changes_nothing_it_says():
    minter = Minter(KEY)
    label = minter.label("r", Variant.STABLE, "i")
    first, second = minter.mint(label, 10.1), minter.mint(label, 10.9)
    signed = first.partition(b".")[0]
    assert first != second and second.partition(b".")[0] == signed  # one signed part
    assert minter.mint(label, 11.0).partition(b".")[0] != signed
    reader = Reader(KEY)
    other_nonce = signed + b".0123abcd42"
    assert reader.read(other_nonce.decode()) == reader.read(first.decode())


def test_ids_are_unique_and_opaque():
    minters = [Minter(KEY), Minter(KEY)]  # two processes (workers) with one key
    label = minters[0].label("r", Variant.STABLE, "r|x")
    ids = {m.mint(label, 1.0) for m in minters for _ in range(5000)}
    assert len(ids) == 10_000


def test_without_the_key_an_id_can_be_neither_made_nor_altered():
    minter = Minter(KEY)
    signature, _, tag = minter.mint(minter.label("r", Variant.STABLE, "i"), 5.0).partition(b".")
    raw = bytearray(base64.urlsafe_b64decode(signature))

    def as_id(data: bytes) -> str:
        return (base64.urlsafe_b64encode(data) + b"." + tag).decode()

    assert Reader(KEY).read(as_id(bytes(raw))) is not None
    assert Reader(key_of("another secret")).read(as_id(bytes(raw))) is None
    raw[1] = ord("c")  # claim the candidate served it
    assert Reader(KEY).read(as_id(bytes(raw))) is None
    forged = Minter(key_of("guess")).mint(Minter(KEY).label("r", Variant.CANDIDATE, "i"), 5.0)
    assert Reader(KEY).read(forged.decode()) is None


@given(st.text(max_size=120))
def test_anything_else_reads_as_no_id(text):
    assert Reader(KEY).read(text) is None


def signed_id(signed: bytes, tag: bytes = b"0123abcd7") -> str:
    """An id made by hand around `signed`, with a correct MAC under KEY."""
    mac = hashlib.blake2b(signed, key=KEY, digest_size=10).digest()
    return (base64.urlsafe_b64encode(signed + mac) + b"." + tag).decode()


def signed_part(
    version: int = 2, variant: bytes = b"c", second: int = 7, name: bytes = b"r", length: int = -1
) -> bytes:
    signed = bytes((version,)) + variant + second.to_bytes(5, "big") + b"\x00\x01\x02\x03"
    signed += bytes((len(name) if length < 0 else length,)) + name
    return signed + bytes(-(len(signed) + 10) % 3)


def test_what_the_reader_takes_apart_is_pinned_field_by_field():
    reader = Reader(KEY)
    served = reader.read(signed_id(signed_part(second=2**32 + 5, name=b"chat")))
    assert served is not None
    assert (served.route, served.variant, served.rollout) == (
        "chat",
        Variant.CANDIDATE,
        b"\x00\x01\x02\x03",
    )
    assert served.at == 2**32 + 5  # all five bytes of the time
    for wrong in (
        signed_part(version=1),
        signed_part(variant=b"x"),
        signed_part(name=b"chat", length=9),  # names more bytes than it holds
        signed_part(name=b"\xff\xfe"),
    ):
        assert reader.read(signed_id(wrong)) is None, wrong
    exact = signed_part(name=b"ab", length=2)
    assert reader.read(signed_id(exact)) is not None


def test_the_ids_shape_is_checked_before_its_signature():
    reader = Reader(KEY)
    good = signed_id(signed_part())
    signature, _, tag = good.partition(".")
    assert reader.read(signature) is None  # no dot
    assert reader.read(signature[1:] + "." + tag) is None  # not whole base64 groups
    assert reader.read(good + ".more") is not None  # what follows the first dot is the nonce's
    padded = good + "9" * (512 - len(good))
    assert len(padded) == 512 and reader.read(padded) is not None
    assert reader.read(padded + "9") is None  # longer than any id


def test_the_key_and_the_ids_layout_are_pinned():
    assert (
        key_of("s").hex()[:16]
        == hashlib.blake2b(b"s", person=b"grayscale-rid", digest_size=32).hexdigest()[:16]
    )
    assert len(key_of("s")) == 32 and key_of("s") != hashlib.blake2b(b"s", digest_size=32).digest()
    minter = Minter(KEY)
    first = minter.mint(minter.label("r", Variant.STABLE, "i"), 1.0)
    tag = first.partition(b".")[2]
    assert len(tag) == 9 and tag.endswith(b"0")  # 8 hex digits, then the counter from 0
    long_name = "n" * 300
    served = Reader(KEY).read(
        minter.mint(minter.label(long_name, Variant.STABLE, "i"), 1.0).decode()
    )
    assert served is not None and served.route == "n" * 255
