from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DeletionMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DELETION_MODE_SOFT_DELETE: _ClassVar[DeletionMode]
    DELETION_MODE_HARD_DELETE: _ClassVar[DeletionMode]
DELETION_MODE_SOFT_DELETE: DeletionMode
DELETION_MODE_HARD_DELETE: DeletionMode

class FeatureValue(_message.Message):
    __slots__ = ("feature_name", "int_value", "float_value", "string_value", "int_list", "float_list", "string_list", "vector_value")
    FEATURE_NAME_FIELD_NUMBER: _ClassVar[int]
    INT_VALUE_FIELD_NUMBER: _ClassVar[int]
    FLOAT_VALUE_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    INT_LIST_FIELD_NUMBER: _ClassVar[int]
    FLOAT_LIST_FIELD_NUMBER: _ClassVar[int]
    STRING_LIST_FIELD_NUMBER: _ClassVar[int]
    VECTOR_VALUE_FIELD_NUMBER: _ClassVar[int]
    feature_name: str
    int_value: int
    float_value: float
    string_value: str
    int_list: IntList
    float_list: FloatList
    string_list: StringList
    vector_value: bytes
    def __init__(self, feature_name: _Optional[str] = ..., int_value: _Optional[int] = ..., float_value: _Optional[float] = ..., string_value: _Optional[str] = ..., int_list: _Optional[_Union[IntList, _Mapping]] = ..., float_list: _Optional[_Union[FloatList, _Mapping]] = ..., string_list: _Optional[_Union[StringList, _Mapping]] = ..., vector_value: _Optional[bytes] = ...) -> None: ...

class IntList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, values: _Optional[_Iterable[int]] = ...) -> None: ...

class FloatList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class StringList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, values: _Optional[_Iterable[str]] = ...) -> None: ...

class Record(_message.Message):
    __slots__ = ("features",)
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    features: _containers.RepeatedCompositeFieldContainer[FeatureValue]
    def __init__(self, features: _Optional[_Iterable[_Union[FeatureValue, _Mapping]]] = ...) -> None: ...

class PutRecordRequest(_message.Message):
    __slots__ = ("feature_group_name", "record", "ttl_s", "source")
    FEATURE_GROUP_NAME_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    feature_group_name: str
    record: Record
    ttl_s: float
    source: str
    def __init__(self, feature_group_name: _Optional[str] = ..., record: _Optional[_Union[Record, _Mapping]] = ..., ttl_s: _Optional[float] = ..., source: _Optional[str] = ...) -> None: ...

class PutRecordResponse(_message.Message):
    __slots__ = ("applied", "write_token")
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    WRITE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    applied: bool
    write_token: str
    def __init__(self, applied: _Optional[bool] = ..., write_token: _Optional[str] = ...) -> None: ...

class PutRecordsRequest(_message.Message):
    __slots__ = ("feature_group_name", "records", "ttl_s", "sources")
    FEATURE_GROUP_NAME_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    feature_group_name: str
    records: _containers.RepeatedCompositeFieldContainer[Record]
    ttl_s: float
    sources: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, feature_group_name: _Optional[str] = ..., records: _Optional[_Iterable[_Union[Record, _Mapping]]] = ..., ttl_s: _Optional[float] = ..., sources: _Optional[_Iterable[str]] = ...) -> None: ...

class PutRecordsResponse(_message.Message):
    __slots__ = ("written", "stale", "write_token")
    WRITTEN_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    WRITE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    written: int
    stale: int
    write_token: str
    def __init__(self, written: _Optional[int] = ..., stale: _Optional[int] = ..., write_token: _Optional[str] = ...) -> None: ...

class GetRecordRequest(_message.Message):
    __slots__ = ("feature_group_name", "record_identifier", "feature_names", "expiration_time_response", "consistent_after")
    FEATURE_GROUP_NAME_FIELD_NUMBER: _ClassVar[int]
    RECORD_IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
    FEATURE_NAMES_FIELD_NUMBER: _ClassVar[int]
    EXPIRATION_TIME_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    CONSISTENT_AFTER_FIELD_NUMBER: _ClassVar[int]
    feature_group_name: str
    record_identifier: str
    feature_names: _containers.RepeatedScalarFieldContainer[str]
    expiration_time_response: bool
    consistent_after: str
    def __init__(self, feature_group_name: _Optional[str] = ..., record_identifier: _Optional[str] = ..., feature_names: _Optional[_Iterable[str]] = ..., expiration_time_response: _Optional[bool] = ..., consistent_after: _Optional[str] = ...) -> None: ...

class GetRecordResponse(_message.Message):
    __slots__ = ("record", "expires_at_us")
    RECORD_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_US_FIELD_NUMBER: _ClassVar[int]
    record: Record
    expires_at_us: int
    def __init__(self, record: _Optional[_Union[Record, _Mapping]] = ..., expires_at_us: _Optional[int] = ...) -> None: ...

class BatchGetRecordIdentifier(_message.Message):
    __slots__ = ("feature_group_name", "record_identifiers", "feature_names")
    FEATURE_GROUP_NAME_FIELD_NUMBER: _ClassVar[int]
    RECORD_IDENTIFIERS_FIELD_NUMBER: _ClassVar[int]
    FEATURE_NAMES_FIELD_NUMBER: _ClassVar[int]
    feature_group_name: str
    record_identifiers: _containers.RepeatedScalarFieldContainer[str]
    feature_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, feature_group_name: _Optional[str] = ..., record_identifiers: _Optional[_Iterable[str]] = ..., feature_names: _Optional[_Iterable[str]] = ...) -> None: ...

class BatchGetRecordRequest(_message.Message):
    __slots__ = ("identifiers", "expiration_time_response", "consistent_after")
    IDENTIFIERS_FIELD_NUMBER: _ClassVar[int]
    EXPIRATION_TIME_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    CONSISTENT_AFTER_FIELD_NUMBER: _ClassVar[int]
    identifiers: _containers.RepeatedCompositeFieldContainer[BatchGetRecordIdentifier]
    expiration_time_response: bool
    consistent_after: str
    def __init__(self, identifiers: _Optional[_Iterable[_Union[BatchGetRecordIdentifier, _Mapping]]] = ..., expiration_time_response: _Optional[bool] = ..., consistent_after: _Optional[str] = ...) -> None: ...

class BatchGetRecordResultDetail(_message.Message):
    __slots__ = ("feature_group_name", "record_identifier", "record", "expires_at_us")
    FEATURE_GROUP_NAME_FIELD_NUMBER: _ClassVar[int]
    RECORD_IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_US_FIELD_NUMBER: _ClassVar[int]
    feature_group_name: str
    record_identifier: str
    record: Record
    expires_at_us: int
    def __init__(self, feature_group_name: _Optional[str] = ..., record_identifier: _Optional[str] = ..., record: _Optional[_Union[Record, _Mapping]] = ..., expires_at_us: _Optional[int] = ...) -> None: ...

class BatchGetRecordError(_message.Message):
    __slots__ = ("feature_group_name", "record_identifier", "error_code", "error_message")
    FEATURE_GROUP_NAME_FIELD_NUMBER: _ClassVar[int]
    RECORD_IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    feature_group_name: str
    record_identifier: str
    error_code: str
    error_message: str
    def __init__(self, feature_group_name: _Optional[str] = ..., record_identifier: _Optional[str] = ..., error_code: _Optional[str] = ..., error_message: _Optional[str] = ...) -> None: ...

class BatchGetRecordResponse(_message.Message):
    __slots__ = ("records", "errors", "unprocessed_identifiers")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    UNPROCESSED_IDENTIFIERS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[BatchGetRecordResultDetail]
    errors: _containers.RepeatedCompositeFieldContainer[BatchGetRecordError]
    unprocessed_identifiers: _containers.RepeatedCompositeFieldContainer[BatchGetRecordIdentifier]
    def __init__(self, records: _Optional[_Iterable[_Union[BatchGetRecordResultDetail, _Mapping]]] = ..., errors: _Optional[_Iterable[_Union[BatchGetRecordError, _Mapping]]] = ..., unprocessed_identifiers: _Optional[_Iterable[_Union[BatchGetRecordIdentifier, _Mapping]]] = ...) -> None: ...

class DeleteRecordRequest(_message.Message):
    __slots__ = ("feature_group_name", "record_identifier", "event_time", "deletion_mode")
    FEATURE_GROUP_NAME_FIELD_NUMBER: _ClassVar[int]
    RECORD_IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    DELETION_MODE_FIELD_NUMBER: _ClassVar[int]
    feature_group_name: str
    record_identifier: str
    event_time: str
    deletion_mode: DeletionMode
    def __init__(self, feature_group_name: _Optional[str] = ..., record_identifier: _Optional[str] = ..., event_time: _Optional[str] = ..., deletion_mode: _Optional[_Union[DeletionMode, str]] = ...) -> None: ...

class DeleteRecordResponse(_message.Message):
    __slots__ = ("applied", "write_token")
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    WRITE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    applied: bool
    write_token: str
    def __init__(self, applied: _Optional[bool] = ..., write_token: _Optional[str] = ...) -> None: ...

class EchoRequest(_message.Message):
    __slots__ = ("payload",)
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    def __init__(self, payload: _Optional[bytes] = ...) -> None: ...

class EchoResponse(_message.Message):
    __slots__ = ("payload",)
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    def __init__(self, payload: _Optional[bytes] = ...) -> None: ...
