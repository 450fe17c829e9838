"""Signed request ids: read back by any process with the key, by nobody without it."""

from __future__ import annotations

import base64

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
