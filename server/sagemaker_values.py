"""Feature values the way SageMaker Feature Store's runtime sends them, to and from Tessera's wire
records (`tessera.v1.Record`).

SageMaker carries every value as text: `ValueAsString` for a scalar, `ValueAsStringList` for a
collection. By the feature's type in the group (core/schema.py):

    Integral            ValueAsString "42"              int_value (decimal, int64)
    Fractional          ValueAsString "0.25"            float_value (Python float syntax)
    String              ValueAsString "text"            string_value
    List/Set[Integral]  ValueAsStringList ["1", "2"]    int_list
    List/Set[Fractional] ValueAsStringList ["0.5"]      float_list
    List/Set[String]    ValueAsStringList ["a", "b"]    string_list
    Vector[N]           ValueAsStringList ["0.1", ...]  vector_value (N float32)

Only the text is parsed here (a number that is not a number, a scalar sent as a list): the
record then goes through the same validation as a gRPC put (`validate_record`: types,
finiteness, set uniqueness, vector dimension, identifier, event time, size). Out, values are
written back the same way: ints in decimal, floats in Python's shortest round-trip form,
vectors as float32 in their shortest form.
"""

from __future__ import annotations

import re

import msgspec
import numpy as np

from tessera.core.errors import InvalidRequestError
from tessera.core.schema import CompiledSchema, FeatureSpec, ScalarType
from tessera.proto.v1 import feature_store_pb2 as pb
from tessera.server.record_json import sagemaker_record

_INTEGRAL = re.compile(r"[+-]?[0-9]+")
_SCALARS = frozenset(("int_value", "float_value", "string_value"))


class FeatureValue(msgspec.Struct, omit_defaults=True):
    """SageMaker's FeatureValue: a feature's name and its value as text."""

    FeatureName: str
    ValueAsString: str | None = None
    ValueAsStringList: list[str] | None = None


def to_record(
    schema: CompiledSchema, values: list[FeatureValue], where: str = "Record"
) -> pb.Record:
    """The wire record of SageMaker feature values (InvalidRequestError naming the feature for
    text that is not of its type; a feature the group does not have is refused as a gRPC put
    refuses it)."""
    record = pb.Record()
    add = record.features.add
    features = schema.features
    for v in values:
        spec = features.get(v.FeatureName)
        if spec is None:
            raise InvalidRequestError(f"{where}: {schema.unknown_feature(v.FeatureName).message}")
        fill(add(feature_name=spec.name), spec, v, where)
    return record


def fill(fv: pb.FeatureValue, spec: FeatureSpec, v: FeatureValue, where: str) -> None:
    """Set `fv` from SageMaker's text form of a value of `spec`."""
    text, texts = v.ValueAsString, v.ValueAsStringList
    if text is not None and texts is not None:
        raise InvalidRequestError(
            f"{where}: feature '{spec.name}' has both ValueAsString and ValueAsStringList; "
            "give one"
        )
    scalar = spec.type.scalar
    if spec.oneof in _SCALARS:
        if text is None:
            raise InvalidRequestError(
                f"{where}: feature '{spec.name}' has type {spec.type}: give its value as "
                + ("ValueAsString, not ValueAsStringList" if texts is not None
                   else "ValueAsString (omit the feature for a null)")
            )
        if scalar is ScalarType.STRING:
            fv.string_value = text
        elif scalar is ScalarType.INTEGRAL:
            fv.int_value = _int(text, spec, where)
        else:
            fv.float_value = _float(text, spec, where)
        return
    if texts is None:
        raise InvalidRequestError(
            f"{where}: feature '{spec.name}' has type {spec.type}: give its values as "
            + ("ValueAsStringList, not ValueAsString" if text is not None
               else "ValueAsStringList (omit the feature for a null)")
        )
    if scalar is ScalarType.STRING:
        fv.string_list.SetInParent()
        fv.string_list.values.extend(texts)
    elif scalar is ScalarType.INTEGRAL:
        fv.int_list.SetInParent()
        fv.int_list.values.extend([_int(t, spec, where) for t in texts])
    else:  # a Fractional list or a Vector: validation makes the vector of the floats
        fv.float_list.SetInParent()
        fv.float_list.values.extend([_float(t, spec, where) for t in texts])


def _int(text: str, spec: FeatureSpec, where: str) -> int:
    if _INTEGRAL.fullmatch(text) is not None:
        value = int(text)
        if -(2**63) <= value < 2**63:
            return value
        raise InvalidRequestError(
            f"{where}: feature '{spec.name}' has type {spec.type}; {_shown(text)} is out of the "
            "Integral range (64-bit signed)"
        )
    raise InvalidRequestError(
        f"{where}: feature '{spec.name}' has type {spec.type}; {_shown(text)} is not an "
        "Integral (a whole number in decimal)"
    )


def _float(text: str, spec: FeatureSpec, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise InvalidRequestError(
            f"{where}: feature '{spec.name}' has type {spec.type}; {_shown(text)} is not a "
            "Fractional (a decimal number such as 0.25 or 1e-3)"
        ) from None


def _shown(text: str) -> str:
    return repr(text if len(text) <= 64 else text[:64] + "...")


_encode = msgspec.json.encode
#: Per feature name: the JSON text that opens its FeatureValue, for a scalar and for a list
#: (feature names are ASCII letters, digits, '-' and '_': nothing to escape).
_OPENERS: dict[str, tuple[bytes, bytes]] = {}


def _openers(name: str) -> tuple[bytes, bytes]:
    found = _OPENERS.get(name)
    if found is None:
        head = b'{"FeatureName":' + _encode(name)
        found = (head + b',"ValueAsString":', head + b',"ValueAsStringList":')
        if len(_OPENERS) < 100_000:
            _OPENERS[name] = found
    return found


def record_json(payload: bytes | memoryview) -> bytes:
    """SageMaker's Record (a JSON array of FeatureValue objects) of a stored wire record, as
    JSON text; features without a value (an aggregation with no events) are left out, as
    SageMaker leaves out features it has no value for. Written from the stored bytes by the
    compiled kernels (server/record_json.py); `reference_record_json` takes what they do not
    (bytes the server never stores) and is their reference in the tests."""
    body = sagemaker_record(payload)
    return reference_record_json(payload) if body is None else body


def reference_record_json(payload: bytes | memoryview) -> bytes:
    """`record_json` value by value from the decoded record."""
    record = pb.Record.FromString(bytes(payload))
    parts: list[bytes] = []
    for fv in record.features:
        kind = fv.WhichOneof("value")
        if kind is None:
            continue
        scalar, listed = _openers(fv.feature_name)
        if kind == "string_value":
            parts.append(scalar + _encode(fv.string_value) + b"}")
        elif kind == "int_value":
            parts.append(b'%s"%d"}' % (scalar, fv.int_value))
        elif kind == "float_value":
            parts.append(b'%s"%s"}' % (scalar, repr(fv.float_value).encode()))
        elif kind == "vector_value":
            vec = np.frombuffer(fv.vector_value, dtype="<f4")
            parts.append(listed + _encode(vec.astype(str).tolist()) + b"}")
        elif kind == "float_list":
            parts.append(listed + _encode([repr(x) for x in fv.float_list.values]) + b"}")
        elif kind == "string_list":
            parts.append(listed + _encode(list(fv.string_list.values)) + b"}")
        else:
            parts.append(listed + _encode([str(x) for x in fv.int_list.values]) + b"}")
    return b"[" + b",".join(parts) + b"]"
