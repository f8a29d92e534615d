"""ristretto255 group wrapper: encodings, traps in libsodium, RFC 9380 hashing."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from psi import group
from psi.errors import DeserializeError, InvalidInputError

# RFC 9496 §A.1: the first multiples of the generator.
MULTIPLES = [
    "0000000000000000000000000000000000000000000000000000000000000000",
    "e2f2ae0a6abc4e71a884a961c500515f58e30b6aa582dd8db6a65945e08d2d76",
    "6a493210f7499cd17fecb510ae0cea23a110e8d5b901f8acadd3095c73a3b919",
    "94741f5d5d52755ece4f23f044ee27d5d1ea1e2bd196b462166b16152a9d0259",
]
# RFC 9496 §A.2: some non-canonical / invalid encodings.
BAD_ENCODINGS = [
    "00ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",  # non-canonical
    "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # non-canonical
    "0100000000000000000000000000000000000000000000000000000000000000",  # negative
    "ed57ffd8c914fb201471d1c3d245ce3c746fcbe63a3679d51b6a516ebebe0e20",  # negative
    "c34c4e1826e5d403b78e246e88aa051c36ccf0aafebffe137d148a2bf9104562",  # non-square x^2
    "26948d35ca62e643e26a83177332e6b6afeb9d08e4268b650f1f5bbd8d81d371",  # negative xy
    "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",  # all ones
]


def test_generator_multiples_match_rfc9496() -> None:
    assert bytes.fromhex(MULTIPLES[1]) == group.GENERATOR
    for n in (2, 3):
        assert group.scalar_mult_base(group.scalar_from_int(n)) == bytes.fromhex(MULTIPLES[n])
        assert group.scalar_mult(group.scalar_from_int(n), group.GENERATOR) == bytes.fromhex(
            MULTIPLES[n]
        )


def test_identity_is_rejected_even_though_libsodium_accepts_it() -> None:
    import rbcl

    assert rbcl.crypto_core_ristretto255_is_valid_point(group.IDENTITY)
    with pytest.raises(DeserializeError, match="identity"):
        group.decode_element(group.IDENTITY)


@pytest.mark.parametrize("hex_encoding", BAD_ENCODINGS)
def test_invalid_encodings_raise_deserialize_error(hex_encoding: str) -> None:
    with pytest.raises(DeserializeError, match="canonical"):
        group.decode_element(bytes.fromhex(hex_encoding), name="blinded_element[3]")


@pytest.mark.parametrize("data", [b"", b"\x01" * 31, b"\x01" * 33])
def test_wrong_length_element_names_the_field(data: bytes) -> None:
    with pytest.raises(DeserializeError, match=r"evaluated_element\[0\] must be 32 bytes"):
        group.decode_element(data, name="evaluated_element[0]")


def test_unreduced_scalar_is_refused_not_silently_truncated() -> None:
    # ORDER itself and 2^255 - 1 are not canonical scalars.  libsodium would
    # clear bit 255 and multiply by a different number; we refuse.
    for value in (group.ORDER, group.ORDER + 5, 2**255 - 1):
        raw = value.to_bytes(32, "little")
        with pytest.raises(DeserializeError):
            group.decode_scalar(raw)
        with pytest.raises(InvalidInputError):
            group.scalar_mult(raw, group.GENERATOR)
        with pytest.raises(InvalidInputError):
            group.scalar_mult_base(raw)


def test_expand_message_xmd_sha512_rfc9380_vectors() -> None:
    # RFC 9380 §K.3, expand_message_xmd(SHA-512), DST "QUUX-V01-CS02-with-expander-SHA512-256".
    dst = b"QUUX-V01-CS02-with-expander-SHA512-256"
    assert group.expand_message_xmd(b"", dst, 0x20) == bytes.fromhex(
        "6b9a7312411d92f921c6f68ca0b6380730a1a4d982c507211a90964c394179ba"
    )
    assert group.expand_message_xmd(b"abc", dst, 0x20) == bytes.fromhex(
        "0da749f12fbe5483eb066a5f595055679b976e93abe9be6f0f6318bce7aca8dc"
    )
    long = group.expand_message_xmd(b"", dst, 0x80)
    assert long == bytes.fromhex(
        "41b037d1734a5f8df225dd8c7de38f851efdb45c372887be655212d07251b921"
        "b052b62eaed99b46f72f2ef4cc96bfaf254ebbbec091e1a3b9e4fb5e5b619d2e"
        "0c5414800a1d882b62bb5cd1778f098b8eb6cb399d5d9d18f5d5842cf5d13d7e"
        "b00a7cff859b605da678b318bd0e65ebff70bec88c753b159a805d2c89c55961"
    )


def test_one_way_map_matches_rfc9496_vector() -> None:
    # RFC 9496 §A.3: element from 64 uniform bytes (here the SHA-512 of a sentence).
    uniform = hashlib.sha512(b"Ristretto is traditionally a short shot of espresso coffee").digest()
    dst = b"HashToGroup-test"
    assert group.hash_to_group(b"m", dst) == group.hash_to_group(b"m", dst)
    import rbcl

    assert rbcl.crypto_core_ristretto255_from_hash(uniform) == bytes.fromhex(
        "3066f82a1a747d45120d1740f14358531a8f04bbffe6a819f86dfe50f44a0a46"
    )
    expanded = group.expand_message_xmd(b"m", dst, 64)
    assert group.hash_to_group(b"m", dst) == rbcl.crypto_core_ristretto255_from_hash(expanded)


def test_oversized_dst_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="255"):
        group.expand_message_xmd(b"", b"x" * 256, 64)


@given(st.lists(st.integers(min_value=1, max_value=group.ORDER - 1), min_size=1, max_size=20))
def test_batch_inversion_matches_single_inversion(values: list[int]) -> None:
    scalars = [group.scalar_from_int(v) for v in values]
    assert group.scalar_invert_batch(scalars) == [group.scalar_invert(s) for s in scalars]


@given(st.integers(min_value=0, max_value=2**512 - 1))
def test_reduce_wide_is_mod_order(value: int) -> None:
    reduced = group.reduce_wide(value.to_bytes(64, "little"))
    assert group.scalar_to_int(reduced) == value % group.ORDER


@given(st.binary(min_size=32, max_size=32))
def test_decode_element_never_raises_anything_but_deserialize_error(data: bytes) -> None:
    try:
        out = group.decode_element(data)
    except DeserializeError:
        return
    assert out == data and out != group.IDENTITY


@given(st.binary(min_size=32, max_size=32))
def test_decode_scalar_accepts_exactly_the_reduced_range(data: bytes) -> None:
    if int.from_bytes(data, "little") < group.ORDER:
        assert group.decode_scalar(data) == data
    else:
        with pytest.raises(DeserializeError):
            group.decode_scalar(data)


def test_hash_to_scalar_is_sha512_xmd_reduced() -> None:
    dst = b"HashToScalar-test"
    uniform = group.expand_message_xmd(b"m", dst, 64)
    expected = int.from_bytes(uniform, "little") % group.ORDER
    assert group.scalar_to_int(group.hash_to_scalar(b"m", dst)) == expected


@pytest.mark.parametrize(
    "data",
    [bytes.fromhex(h) for h in BAD_ENCODINGS] + [group.IDENTITY, b"", b"\x01" * 31, b"\x01" * 33],
)
def test_decode_and_scalar_mult_rejects_what_decode_element_rejects(data: bytes) -> None:
    with pytest.raises(DeserializeError) as expected:
        group.decode_element(data, name="evaluated_element[7]")
    with pytest.raises(DeserializeError) as got:
        group.decode_and_scalar_mult(group.random_scalar(), data, name="evaluated_element[7]")
    assert str(got.value) == str(expected.value)


@given(
    scalar=st.integers(min_value=0, max_value=group.ORDER - 1),
    data=st.one_of(
        st.binary(min_size=32, max_size=32),
        st.integers(min_value=1, max_value=group.ORDER - 1).map(
            lambda n: group.scalar_mult_base(group.scalar_from_int(n))
        ),
    ),
)
def test_decode_and_scalar_mult_equals_decode_then_multiply(scalar: int, data: bytes) -> None:
    s = group.scalar_from_int(scalar)
    try:
        expected = group.scalar_mult(s, group.decode_element(data))
    except DeserializeError as exc:
        with pytest.raises(DeserializeError, match=str(exc)):
            group.decode_and_scalar_mult(s, data)
    else:
        assert group.decode_and_scalar_mult(s, data) == expected


def test_decode_and_scalar_mult_by_zero_is_the_identity_not_an_error() -> None:
    # libsodium's strict multiplication fails for an identity result; a valid
    # element times zero must still come out as the identity.
    assert group.decode_and_scalar_mult(bytes(32), group.GENERATOR) == group.IDENTITY
