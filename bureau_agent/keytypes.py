"""Key types between `psi.identifiers.KeyType` and the protobuf enum."""

from __future__ import annotations

from blindmatch.v1 import common_pb2
from psi.errors import InvalidInputError
from psi.identifiers import KeyType

__all__ = ["key_type_from_proto", "key_type_to_proto"]

_TO_PROTO: dict[KeyType, common_pb2.KeyType.ValueType] = {
    KeyType.PASSPORT: common_pb2.KEY_TYPE_PASSPORT,
    KeyType.IDCARD: common_pb2.KEY_TYPE_IDCARD,
    KeyType.PERSON: common_pb2.KEY_TYPE_PERSON,
    KeyType.PERSON_PHONETIC: common_pb2.KEY_TYPE_PERSON_PHONETIC,
    KeyType.PHONE: common_pb2.KEY_TYPE_PHONE,
    KeyType.EMAIL: common_pb2.KEY_TYPE_EMAIL,
    KeyType.IBAN: common_pb2.KEY_TYPE_IBAN,
    KeyType.VIN: common_pb2.KEY_TYPE_VIN,
}
_FROM_PROTO = {v: k for k, v in _TO_PROTO.items()}


def key_type_to_proto(key_type: KeyType) -> common_pb2.KeyType.ValueType:
    """The protobuf value of a key type."""
    return _TO_PROTO[key_type]


def key_type_from_proto(value: int) -> KeyType:
    """The key type of a protobuf value; INVALID_ARGUMENT-worthy error when unknown."""
    for proto_value, key_type in _FROM_PROTO.items():
        if proto_value == value:
            return key_type
    raise InvalidInputError(f"unknown key type {value}", field="key_type")
