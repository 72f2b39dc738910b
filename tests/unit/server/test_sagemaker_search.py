"""Search filters and key paging (server/sagemaker_search.py) on records in SageMaker's
shapes, each checked against a direct reading of the records."""

from __future__ import annotations

import random
from typing import Any

import pytest

from tessera.server import sagemaker_search as search
from tessera.server.sagemaker_common import AwsError

KNOWN = ("FeatureGroupName", "CreationTime", "Description", "FeatureDefinitions", "Tags",
         "OnlineStoreConfig")


def _group(name: str, created: float, features: list[tuple[str, str]],
           tags: dict[str, str] | None = None, description: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "FeatureGroupName": name, "CreationTime": created,
        "FeatureDefinitions": [{"FeatureName": f, "FeatureType": t} for f, t in features],
        "Tags": [{"Key": k, "Value": v} for k, v in (tags or {}).items()],
        "OnlineStoreConfig": {"EnableOnlineStore": created > 2},
    }
    if description is not None:
        out["Description"] = description
    return out


RECORDS = [
    _group("users", 1.0, [("id", "String"), ("clicks", "Integral")], {"team": "growth"},
           "Clicks per user"),
    _group("ads", 2.5, [("id", "String"), ("ctr", "Fractional")], {"team": "ads"}),
    _group("items", 4.0, [("clicks", "String"), ("price", "Integral")], {"tier": "1"}),
]


def _names(expression: dict[str, Any]) -> list[str]:
    holds = search.expression_predicate(expression, KNOWN)
    return [r["FeatureGroupName"] for r in RECORDS if holds(r)]


@pytest.mark.parametrize(("f", "expected"), [
    ({"Name": "FeatureGroupName", "Operator": "Equals", "Value": "ads"}, ["ads"]),
    ({"Name": "featuregroupname", "Operator": "NotEquals", "Value": "ads"}, ["users", "items"]),
    ({"Name": "Description", "Operator": "Contains", "Value": "CLICKS"}, ["users"]),
    ({"Name": "Description", "Operator": "Exists"}, ["users"]),
    ({"Name": "Description", "Operator": "NotExists"}, ["ads", "items"]),
    ({"Name": "CreationTime", "Operator": "GreaterThan", "Value": "2.5"}, ["items"]),
    ({"Name": "CreationTime", "Operator": "GreaterThanOrEqualTo", "Value": "2.5"},
     ["ads", "items"]),
    ({"Name": "CreationTime", "Operator": "LessThan", "Value": "1970-01-01T00:00:02Z"},
     ["users"]),
    ({"Name": "CreationTime", "Operator": "LessThanOrEqualTo", "Value": "not a time"}, []),
    ({"Name": "OnlineStoreConfig.EnableOnlineStore", "Operator": "Equals", "Value": "TRUE"},
     ["ads", "items"]),
    ({"Name": "FeatureGroupName", "Operator": "In", "Value": "ads, items,nope"},
     ["ads", "items"]),
    ({"Name": "FeatureDefinitions.FeatureName", "Operator": "Equals", "Value": "clicks"},
     ["users", "items"]),
    ({"Name": "Tags.team", "Operator": "Equals", "Value": "ads"}, ["ads"]),
    ({"Name": "Tags.team", "Operator": "Exists"}, ["users", "ads"]),
    ({"Name": "AllTags", "Operator": "Equals", "Value": "tier"}, ["items"]),
])
def test_each_operator(f: dict[str, Any], expected: list[str]) -> None:
    assert _names({"Filters": [f]}) == expected


def test_nested_filters_hold_on_one_element_and_expressions_combine() -> None:
    same_feature = {"NestedPropertyName": "FeatureDefinitions", "Filters": [
        {"Name": "FeatureDefinitions.FeatureName", "Operator": "Equals", "Value": "clicks"},
        {"Name": "FeatureDefinitions.FeatureType", "Operator": "Equals", "Value": "Integral"}]}
    assert _names({"NestedFilters": [same_feature]}) == ["users"]  # items' clicks is a String
    either = {"Operator": "Or", "Filters": [
        {"Name": "Tags.team", "Operator": "Equals", "Value": "ads"},
        {"Name": "Tags.tier", "Operator": "Exists"}]}
    assert _names({"SubExpressions": [either]}) == ["ads", "items"]
    assert _names({"SubExpressions": [either], "Filters": [
        {"Name": "CreationTime", "Operator": "GreaterThan", "Value": "3"}]}) == ["items"]
    assert _names({"Operator": "Or", "SubExpressions": [either], "NestedFilters": [
        same_feature]}) == ["users", "ads", "items"]


@pytest.mark.parametrize(("expression", "message"), [
    ({"Filters": [{"Name": "Colour", "Operator": "Equals", "Value": "x"}]},
     "property 'Colour' is not searchable"),
    ({"Filters": [{"Name": "Description", "Operator": "Near", "Value": "x"}]},
     "Operator 'Near' is not valid"),
    ({"Filters": [{"Name": "Description", "Operator": "Equals"}]}, "needs a Value"),
    ({"Filters": [{"Name": "Description", "Operator": "Exists", "Value": "x"}]},
     "takes no Value"),
    ({"Operator": "Xor"}, "Operator 'Xor' is not valid"),
    ({"NestedFilters": [{"NestedPropertyName": "FeatureDefinitions", "Filters": [
        {"Name": "Tags.team", "Operator": "Exists"}]}]}, "must start with the NestedPropertyName"),
    ({"Filters": [{"Name": "Description", "Operator": "Exists"}] * 21}, "the limit is 20"),
])
def test_bad_expressions_are_refused_by_name(expression: dict[str, Any], message: str) -> None:
    with pytest.raises(AwsError) as exc:
        search.expression_predicate(expression, KNOWN)
    assert exc.value.code == "ValidationException" and message in exc.value.message


def test_sub_expressions_nest_at_most_five_levels() -> None:
    expr: dict[str, Any] = {"Filters": [{"Name": "Description", "Operator": "Exists"}]}
    for _ in range(4):
        expr = {"SubExpressions": [expr]}
    assert _names(expr) == ["users"]
    with pytest.raises(AwsError, match="at most 5 levels"):
        search.expression_predicate({"SubExpressions": [expr]}, KNOWN)


@pytest.mark.parametrize("descending", [False, True])
def test_key_paging_neither_repeats_nor_skips_while_records_come_and_go(
    descending: bool,
) -> None:
    rng = random.Random(7)
    live = {f"g{i:03d}": float(rng.randint(0, 20)) for i in range(60)}  # ties in the sort key
    kept = set(list(live)[:40])  # present from the first page to the last
    request: dict[str, Any] = {"SortBy": "CreationTime", "MaxResults": 7}
    seen: list[str] = []
    next_token: str | None = None
    new = 0
    while True:
        records = [(search.sort_key({"CreationTime": t, "N": n}, "CreationTime", n),
                    {"N": n, "CreationTime": t}) for n, t in live.items()]
        req = {**request, "NextToken": next_token} if next_token else request
        page, next_token = search.page(records, req, descending, default_max=10)
        assert len(page) <= 7
        seen += [r["N"] for r in page]
        for victim in [n for n in live if n not in kept][:2]:
            del live[victim]  # deleted between pages
        live[f"new{new}"] = float(rng.randint(0, 20))  # created between pages
        new += 1
        if next_token is None:
            break
    assert len(seen) == len(set(seen))
    assert kept <= set(seen)
    keys = [(live.get(n, -1.0), n) for n in seen if n in kept]
    assert keys == sorted(keys, reverse=descending)


def test_records_without_the_sort_property_come_last_in_both_orders() -> None:
    records = [(search.sort_key(r, "Description", r["FeatureGroupName"]), r) for r in RECORDS]
    for descending in (False, True):
        page, _ = search.page(records, {}, descending, default_max=10)
        assert page[0]["FeatureGroupName"] == "users"


def test_a_token_is_bound_to_its_request() -> None:
    records = [(search.sort_key(r, "CreationTime", r["FeatureGroupName"]), r) for r in RECORDS]
    _, token = search.page(records, {"MaxResults": 1, "SortBy": "CreationTime"}, False, 10)
    assert token is not None
    page, _ = search.page(records, {"MaxResults": 1, "SortBy": "CreationTime",
                                    "NextToken": token}, False, 10)
    assert page[0]["FeatureGroupName"] == "ads"
    with pytest.raises(AwsError, match="belongs to a request with other parameters"):
        search.page(records, {"MaxResults": 1, "NextToken": token}, False, 10)
    with pytest.raises(AwsError, match="NextToken is not valid"):
        search.page(records, {"NextToken": "garbage!"}, False, 10)
    with pytest.raises(AwsError, match="MaxResults 101 is not valid"):
        search.page(records, {"MaxResults": 101}, False, 10)
