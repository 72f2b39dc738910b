"""`POST /v1/feature-groups/{name}/compact` bounds `min_files` (2..10000) with a 422 body."""

from __future__ import annotations

import pytest

from tests.integration.wire_helpers import Wire

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("min_files", ["-1", "0", "1", "10001", "many"])
def test_compact_refuses_min_files_out_of_bounds(
    wire: Wire, unique_group_name: str, min_files: str
) -> None:
    wire.create_group(unique_group_name)
    resp = wire.http.post(f"/v1/feature-groups/{unique_group_name}/compact",
                          params={"min_files": min_files})
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["code"] == "InvalidRequest"
    assert error["message"].startswith("query.min_files: ")


def test_compact_accepts_min_files_in_bounds(wire: Wire, unique_group_name: str) -> None:
    wire.create_group(unique_group_name)
    for min_files in ("2", "10000"):
        resp = wire.http.post(f"/v1/feature-groups/{unique_group_name}/compact",
                              params={"min_files": min_files})
        assert resp.status_code == 200, resp.text
        assert resp.json()["partitions_compacted"] == 0


def test_compact_of_an_unknown_group_is_not_found(wire: Wire, unique_group_name: str) -> None:
    resp = wire.http.post(f"/v1/feature-groups/{unique_group_name}/compact")
    assert resp.status_code == 404, resp.text
    assert resp.json()["error"]["code"] == "NotFound"
