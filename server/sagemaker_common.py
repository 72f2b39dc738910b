"""What the SageMaker-compatible APIs share: feature group ARNs and AWS error responses.

Both SageMaker services Tessera speaks (the `sagemaker-featurestore-runtime` runtime, rest-json,
in server/sagemaker_runtime.py, and the `sagemaker` control plane, JSON 1.1, in
server/sagemaker_control.py) name a feature group by "name or ARN" and answer errors the way
botocore parses them. One error body serves both protocols: botocore's rest-json parser takes the
code from the `X-Amzn-ErrorType` header, its JSON 1.1 parser from the body's `__type`, and both
take `message`.
"""

from __future__ import annotations

import re

import msgspec

#: The account id in the ARNs Tessera returns: it has no AWS accounts, and boto3's ARN pattern
#: needs twelve digits.
ACCOUNT_ID = "000000000000"
#: The region in the ARNs Tessera returns when the request names none.
DEFAULT_REGION = "us-east-1"

#: botocore's `FeatureGroupNameOrArn` pattern (both service models), as a full match: the ARN
#: prefix is optional, the name is group 2.
_NAME_OR_ARN = re.compile(
    r"(arn:aws[a-z\-]*:sagemaker:[a-z0-9\-]*:[0-9]{12}:feature-group/)?"
    r"([a-zA-Z0-9]([-_]*[a-zA-Z0-9]){0,63})"
)
#: The region of a SigV4 `Authorization` header's credential scope
#: (`Credential=AKID/20261129/us-east-1/sagemaker/aws4_request`).
_SCOPE_REGION = re.compile(r"Credential=[^/,\s]+/\d{8}/([a-z0-9\-]+)/")


class AwsError(Exception):
    """An error answered in AWS's shape: `code` is the service model's error shape name
    (ValidationError, ResourceNotFound, ConflictException, AccessForbidden, ServiceUnavailable,
    InternalFailure, ResourceInUse, ResourceLimitExceeded), `status` its HTTP status."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status

    def body(self) -> bytes:
        """The JSON body: `{"__type": code, "message": message}`."""
        return error_body(self.code, self.message)

    def headers(self) -> list[tuple[bytes, bytes]]:
        """The response headers: content type and `X-Amzn-ErrorType`."""
        return error_headers(self.code)


def validation_error(message: str) -> AwsError:
    return AwsError("ValidationError", message, 400)


def not_found(message: str) -> AwsError:
    return AwsError("ResourceNotFound", message, 404)


def error_body(code: str, message: str) -> bytes:
    # A message may quote a lone surrogate sent in JSON: escaped, it still encodes as UTF-8.
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return msgspec.json.encode({"__type": code, "message": message})


def error_headers(code: str) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", b"application/json"), (b"x-amzn-errortype", code.encode())]


def feature_group_arn(name: str, region: str = DEFAULT_REGION) -> str:
    """The ARN Tessera returns for a feature group. AWS lower-cases the name in its ARNs, and so
    does Tessera: group names are unique without regard to case, so the ARN still names one."""
    return f"arn:aws:sagemaker:{region}:{ACCOUNT_ID}:feature-group/{name.lower()}"


def group_name(name_or_arn: str) -> str:
    """The feature group name in a "name or ARN" (an ARN's name is lower case: look it up without
    regard to case); ValidationError when it matches neither, naming the pattern."""
    m = _NAME_OR_ARN.fullmatch(name_or_arn)
    if m is None:
        raise validation_error(
            f"Value '{name_or_arn}' at 'featureGroupName' failed to satisfy constraint: Member "
            f"must satisfy regular expression pattern: {_NAME_OR_ARN.pattern}"
        )
    return m.group(2)


def request_region(authorization: str | None) -> str:
    """The region a SigV4-signed request was signed for (DEFAULT_REGION when unsigned)."""
    m = _SCOPE_REGION.search(authorization or "")
    return m.group(1) if m else DEFAULT_REGION
