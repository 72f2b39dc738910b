"""SageMaker's Search (and ListFeatureGroups' paging) over records already in SageMaker's
shapes (server/sagemaker_shapes.py): a feature group or a feature's metadata as a JSON dict.

A filter names a property by its path in the record, dots between members (case-insensitive:
`FeatureGroupARN` and `FeatureGroupArn` both name the ARN). A path through a list looks into
every element (`FeatureDefinitions.FeatureName` is every feature's name); `Tags.<key>` and
`Parameters.<key>` are the value of that key; `AllTags` / `AllParameters` are every key and
value. A filter holds when one of the property's values satisfies it (NotEquals and NotExists:
when none does):

- Equals, NotEquals, In (comma-separated values): equality. Strings compare exactly, booleans
  as `true` / `false`, numbers and timestamps as numbers (a timestamp's value may be seconds
  since the epoch or ISO 8601, e.g. `2026-11-29T14:00:00Z`).
- GreaterThan, GreaterThanOrEqualTo, LessThan, LessThanOrEqualTo: order, as above.
- Contains: substring, case-insensitively.
- Exists, NotExists: whether the property has a value (no Value).

`NestedFilters` (NestedPropertyName a list, e.g. `FeatureDefinitions`) hold when one element of
the list satisfies all their filters (`FeatureDefinitions.FeatureName` and `.FeatureType` of
the same feature). Within an expression, filters, nested filters and sub-expressions combine
with its Operator (And by default); sub-expressions nest up to `MAX_DEPTH` levels.

Paging is by key, not offset: a NextToken holds the sort key of the last result returned and a
digest of the request, so a page never repeats or skips a record that existed throughout the
listing, whatever is created or deleted between pages; a token is refused by another request.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from tessera.server.sagemaker_shapes import Json, field, refuse_unknown, validation

OPERATORS = ("Equals", "NotEquals", "GreaterThan", "GreaterThanOrEqualTo", "LessThan",
             "LessThanOrEqualTo", "Contains", "Exists", "NotExists", "In")
MAX_DEPTH = 5
MAX_RESULTS = 100
_KEYED = {"tags": "tags", "parameters": "parameters"}  # lists of {Key, Value}
_ALL = {"alltags": "tags", "allparameters": "parameters"}

Predicate = Callable[[Json], bool]


# --- properties ---------------------------------------------------------------------------------


def _member(node: Mapping[str, Any], name: str) -> Any:
    if name in node:
        return node[name]
    low = name.lower()
    return next((v for k, v in node.items() if k.lower() == low), None)


def values(record: Json, path: str) -> list[Any]:
    """The values of the property `path` in `record` (see the module docstring)."""
    parts = path.split(".")
    head = parts[0].lower()
    if head in _ALL and len(parts) == 1:
        pairs = _member(record, _ALL[head]) or []
        return [x for p in pairs for x in (p["Key"], p["Value"])]
    found: list[Any] = []
    _walk(record, parts, found)
    return found


def accessor(path: str, known: Sequence[str] | None) -> Callable[[Json], list[Any]]:
    """`values(record, path)` as a function made once per filter: a member of the record (its
    name as the resource spells it in `known`) or a `Tags.<key>` / `Parameters.<key>` value is
    one dict lookup per record; other paths walk."""
    parts = path.split(".")
    head = parts[0].lower()
    member = next((k for k in known or () if k.lower() == head), None)
    if member is None or head in _ALL:
        return lambda record: values(record, path)
    if len(parts) == 1:

        def one(record: Json) -> list[Any]:
            v = record.get(member)
            if isinstance(v, list):
                return [x for x in v if x is not None]
            return [] if v is None else [v]

        return one
    if head in _KEYED:
        key = ".".join(parts[1:])
        return lambda record: [p["Value"] for p in record.get(member) or () if p["Key"] == key]
    rest = parts[1:]

    def walk(record: Json) -> list[Any]:
        found: list[Any] = []
        _walk(record.get(member), rest, found)
        return found

    return walk


def _walk(node: Any, parts: Sequence[str], out: list[Any]) -> None:
    if isinstance(node, list):
        for element in node:
            _walk(element, parts, out)
        return
    if not parts:
        if node is not None:
            out.append(node)
        return
    if not isinstance(node, dict):
        return
    child = _member(node, parts[0])
    if parts[0].lower() in _KEYED and isinstance(child, list) and len(parts) > 1:
        key = ".".join(parts[1:])  # a tag key may hold dots
        out.extend(p["Value"] for p in child if isinstance(p, dict) and p.get("Key") == key)
        return
    _walk(child, parts[1:], out)


def check_property(path: str, known: Sequence[str], where: str) -> None:
    """Refuse a property whose first member the resource does not have, naming the known."""
    head = path.split(".")[0].lower()
    if head not in _ALL and head not in (k.lower() for k in known):
        every = "AllTags" if "Tags" in known else "AllParameters"
        raise validation(f"{where}: property '{path}' is not searchable here; known: "
                         f"{', '.join(known)}, {every}")


# --- comparisons --------------------------------------------------------------------------------


def as_number(text: str) -> float | None:
    try:
        number = float(text)
    except ValueError:
        try:
            stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return None
        return stamp.timestamp() if stamp.tzinfo else None
    return number if math.isfinite(number) else None


def _typed(value: Any, text: str) -> tuple[Any, Any] | None:
    """(value, the filter's text as value's type), or None when the text is not of it."""
    if isinstance(value, bool):
        low = text.lower()
        return (value, low == "true") if low in ("true", "false") else None
    if isinstance(value, (int, float)):
        number = as_number(text)
        return None if number is None else (value, number)
    return (str(value), text)


def _holds(op: str, value: Any, text: str) -> bool:
    if op == "Contains":
        return text.lower() in str(value).lower()
    if op == "In":
        return any(_holds("Equals", value, t.strip()) for t in text.split(","))
    pair = _typed(value, text)
    if pair is None:
        return False
    a, b = pair
    if op in ("Equals", "NotEquals"):
        return bool(a == b)
    if op == "GreaterThan":
        return bool(a > b)
    if op == "GreaterThanOrEqualTo":
        return bool(a >= b)
    if op == "LessThan":
        return bool(a < b)
    return bool(a <= b)  # LessThanOrEqualTo


def filter_predicate(f: Any, known: Sequence[str] | None, where: str) -> Predicate:
    """One Filter as a predicate on a record (`known`: the searchable members, None: any, as
    inside a nested filter's element)."""
    if not isinstance(f, dict):
        raise validation(f"'{where}' must be a structure")
    refuse_unknown(f, ("Name", "Operator", "Value"), where)
    name = field(f, "Name", str, True, f"{where}.")
    op = field(f, "Operator", str, False, f"{where}.") or "Equals"
    text = field(f, "Value", str, False, f"{where}.")
    if op not in OPERATORS:
        raise validation(f"{where}.Operator '{op}' is not valid; allowed: {', '.join(OPERATORS)}")
    if op in ("Exists", "NotExists"):
        if text is not None:
            raise validation(f"{where}: Operator {op} takes no Value")
    elif text is None or text == "":
        raise validation(f"{where}: Operator {op} needs a Value")
    if known is not None:
        check_property(name, known, where)
    get = accessor(name, known)
    if op == "Exists":
        return lambda r: bool(get(r))
    if op == "NotExists":
        return lambda r: not get(r)
    value_text: str = text or ""
    test = "Equals" if op == "NotEquals" else op

    def holds(record: Json) -> bool:
        for v in get(record):
            # a string's Equals is the common case: no conversion
            if (v == value_text) if (test == "Equals" and type(v) is str) else _holds(
                    test, v, value_text):
                return True
        return False

    if op == "NotEquals":
        return lambda r: not holds(r)
    return holds


def expression_predicate(expr: Any, known: Sequence[str], where: str = "SearchExpression",
                         depth: int = 1) -> Predicate:
    """A SearchExpression as a predicate on a record (the module docstring)."""
    if depth > MAX_DEPTH:
        raise validation(f"{where}: SubExpressions nest at most {MAX_DEPTH} levels")
    if not isinstance(expr, dict):
        raise validation(f"'{where}' must be a structure")
    refuse_unknown(expr, ("Filters", "NestedFilters", "SubExpressions", "Operator"), where)
    parts: list[Predicate] = []
    for i, f in enumerate(_bounded(expr, "Filters", where)):
        parts.append(filter_predicate(f, known, f"{where}.Filters[{i}]"))
    for i, nf in enumerate(_bounded(expr, "NestedFilters", where)):
        parts.append(_nested(nf, known, f"{where}.NestedFilters[{i}]"))
    for i, sub in enumerate(_bounded(expr, "SubExpressions", where)):
        parts.append(expression_predicate(sub, known, f"{where}.SubExpressions[{i}]", depth + 1))
    op = field(expr, "Operator", str, False, f"{where}.") or "And"
    if op not in ("And", "Or"):
        raise validation(f"{where}.Operator '{op}' is not valid; allowed: And, Or")
    if len(parts) == 1:
        return parts[0]
    if op == "Or":
        return lambda r: any(p(r) for p in parts)
    return lambda r: all(p(r) for p in parts)


def _bounded(expr: Json, name: str, where: str) -> list[Any]:
    items = field(expr, name, list, False, f"{where}.") or []
    if len(items) > 20:
        raise validation(f"{where}.{name} has {len(items)} entries; the limit is 20")
    return items


def _nested(nf: Any, known: Sequence[str], where: str) -> Predicate:
    if not isinstance(nf, dict):
        raise validation(f"'{where}' must be a structure")
    refuse_unknown(nf, ("NestedPropertyName", "Filters"), where)
    prop = field(nf, "NestedPropertyName", str, True, f"{where}.")
    check_property(prop, known, where)
    filters = field(nf, "Filters", list, True, f"{where}.")
    inner: list[tuple[str, Predicate]] = []
    prefix = prop + "."
    for i, f in enumerate(filters):
        fw = f"{where}.Filters[{i}]"
        name = f.get("Name") if isinstance(f, dict) else None
        if not isinstance(name, str) or not name.lower().startswith(prefix.lower()):
            raise validation(f"{fw}: Name must start with the NestedPropertyName '{prefix}'")
        relative = {**f, "Name": name[len(prefix):]}
        inner.append((fw, filter_predicate(relative, None, fw)))
    preds = [p for _, p in inner]

    def holds(record: Json) -> bool:
        elements = _member(record, prop)
        elements = elements if isinstance(elements, list) else [elements]
        return any(isinstance(e, dict) and all(p(e) for p in preds) for e in elements)

    return holds


# --- sorting and paging -------------------------------------------------------------------------


def sort_key(record: Json, prop: str, identity: str) -> list[Any]:
    """A JSON-safe, totally ordered key: (has no value, type rank, value, identity)."""
    found = values(record, prop)
    if not found:
        return [1, 0, 0, identity]
    v = found[0]
    if isinstance(v, bool):
        return [0, 0, int(v), identity]
    if isinstance(v, (int, float)):
        return [0, 0, v, identity]
    return [0, 1, str(v), identity]


def digest(request: Json) -> str:
    """What a NextToken is bound to: the request without NextToken and MaxResults."""
    rest = {k: v for k, v in request.items() if k not in ("NextToken", "MaxResults")}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()[:16]


def encode_token(key: list[Any], request_digest: str) -> str:
    raw = json.dumps({"k": key, "q": request_digest}).encode()
    return base64.urlsafe_b64encode(raw).decode()


def decode_token(token: str, request_digest: str) -> list[Any]:
    try:
        doc = json.loads(base64.urlsafe_b64decode(token.encode()))
        key, bound = doc["k"], doc["q"]
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise validation("NextToken is not valid: pass the one a previous answer gave") from None
    if bound != request_digest or not isinstance(key, list):
        raise validation("NextToken is not valid for this request: it belongs to a request "
                         "with other parameters")
    return key


def _rank(key: list[Any]) -> tuple[Any, ...]:
    return tuple(key)


def page(records: list[tuple[list[Any], Json]], request: Json, descending: bool,
         default_max: int) -> tuple[list[Json], str | None]:
    """One page of `records` (each with its `sort_key`): those after the request's NextToken
    in order, at most MaxResults, and the NextToken of the next page (None: the last)."""
    limit = field(request, "MaxResults", int) or default_max
    if not 1 <= limit <= MAX_RESULTS:
        raise validation(f"MaxResults {limit} is not valid; allowed: 1-{MAX_RESULTS}")
    bound = digest(request)
    token = field(request, "NextToken", str)
    ordered = sorted(records, key=lambda kr: _rank(_for_order(kr[0], descending)),
                     reverse=descending)
    if token:
        after = decode_token(token, bound)
        mark = _rank(_for_order(after, descending))
        if descending:
            ordered = [kr for kr in ordered if _rank(_for_order(kr[0], True)) < mark]
        else:
            ordered = [kr for kr in ordered if _rank(_for_order(kr[0], False)) > mark]
    chosen = ordered[:limit]
    more = len(ordered) > limit
    next_token = encode_token(chosen[-1][0], bound) if more else None
    return [r for _, r in chosen], next_token


def _for_order(key: list[Any], descending: bool) -> list[Any]:
    """Records without the property come last in both orders."""
    if descending and key[0] == 1:
        return [-1, *key[1:]]
    return key
