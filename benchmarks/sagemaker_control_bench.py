"""The SageMaker control plane's cost per call (server/sagemaker_control.py) on a registry of
many groups: what a Describe, a List page, a Search over groups or over every feature costs the
serving process that answers it (it shares that process's CPU with the record reads).

In process, on the registry the single-process server composes (real RocksDB, synced writes,
offline folders): `SageMakerControl` is called as the HTTP route calls it, without HTTP (its
cost is the same for every operation, and the route is not a hot path). Figures: per call,
wall-clock median and p99 and process CPU microseconds (user + system, so noise from other
processes on the machine shows in wall time, not in CPU), the load average before and after,
and Search's cost relative to a ListFeatureGroups page measured in the same run. Every answer
is checked (hit counts, the group described).

    .venv/bin/python -m benchmarks.sagemaker_control_bench [--groups 300] [--features 50]

Writes benchmarks/results/sagemaker_control.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tessera.core.schema import FeatureGroupDefinition
from tessera.server.sagemaker_control import SageMakerControl
from tests.registry_harness import local_registry

REGION = "us-east-1"
OWNERS = 7


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _definition(g: int, features: int) -> FeatureGroupDefinition:
    defs: list[dict[str, Any]] = [{"feature_name": "id", "feature_type": "String"},
                                  {"feature_name": "ts", "feature_type": "Fractional"}]
    defs += [{"feature_name": f"f{i}", "feature_type": "Integral",
              "parameters": {"owner": f"team{i % OWNERS}"}} for i in range(features - 2)]
    return FeatureGroupDefinition.model_validate({
        "feature_group_name": f"g{g:05d}", "record_identifier_feature_name": "id",
        "event_time_feature_name": "ts", "feature_definitions": defs,
        "tags": [{"key": "team", "value": f"team{g % OWNERS}"}]})


def _measure(call: Callable[[], Any], check: Callable[[Any], bool], rounds: int) -> dict[str, Any]:
    walls: list[float] = []
    cpu0 = _cpu_s()
    for _ in range(rounds):
        t0 = time.perf_counter()
        out = call()
        walls.append(time.perf_counter() - t0)
        if not check(out):
            raise AssertionError(f"a wrong answer: {str(out)[:300]}")
    cpu = (_cpu_s() - cpu0) / rounds
    walls.sort()
    return {"calls": rounds, "wall_ms_p50": round(statistics.median(walls) * 1e3, 3),
            "wall_ms_p99": round(walls[min(rounds - 1, int(rounds * 0.99))] * 1e3, 3),
            "cpu_us_per_call": round(cpu * 1e6, 1)}


def run(groups: int, features: int, rounds: int) -> dict[str, Any]:
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp, local_registry(Path(tmp) / "data") as registry:
        control = SageMakerControl(registry)
        t0, cpu0 = time.perf_counter(), _cpu_s()
        for g in range(groups):
            registry.create(_definition(g, features))
        create = {"groups": groups, "wall_ms_per_group": round(
            (time.perf_counter() - t0) / groups * 1e3, 3),
            "cpu_us_per_group": round((_cpu_s() - cpu0) / groups * 1e6, 1)}
        per_owner = groups * sum(1 for i in range(features - 2) if i % OWNERS == 3)
        per_team = sum(1 for g in range(groups) if g % OWNERS == 3)
        by_param = {"Resource": "FeatureMetadata", "MaxResults": 100, "SearchExpression": {
            "Filters": [{"Name": "Parameters.owner", "Operator": "Equals", "Value": "team3"}]}}
        by_tag = {"Resource": "FeatureGroup", "MaxResults": 100, "SearchExpression": {
            "Filters": [{"Name": "Tags.team", "Operator": "Equals", "Value": "team3"}]}}
        name = f"g{groups // 2:05d}"
        cold_t0, cold_cpu0 = time.perf_counter(), _cpu_s()
        control.search(by_param, REGION)  # the first builds every feature's record
        cold = {"wall_ms": round((time.perf_counter() - cold_t0) * 1e3, 3),
                "cpu_us": round((_cpu_s() - cold_cpu0) * 1e6, 1)}
        ops = {
            "DescribeFeatureGroup": _measure(
                lambda: control.describe_feature_group({"FeatureGroupName": name}, REGION),
                lambda out: out["FeatureGroupName"] == name
                and len(out["FeatureDefinitions"]) == features, rounds * 10),
            "ListFeatureGroups_page_of_100": _measure(
                lambda: control.list_feature_groups({"MaxResults": 100}, REGION),
                lambda out: len(out["FeatureGroupSummaries"]) == min(100, groups), rounds),
            "Search_FeatureGroup_by_tag": _measure(
                lambda: control.search(by_tag, REGION),
                lambda out: out["TotalHits"]["Value"] == per_team, rounds),
            "Search_FeatureMetadata_by_parameter": _measure(
                lambda: control.search(by_param, REGION),
                lambda out: out["TotalHits"]["Value"] == per_owner
                and len(out["Results"]) == min(100, per_owner), rounds),
        }
        updates = iter(range(10**9))
        ops["UpdateFeatureMetadata"] = _measure(
            lambda: control.update_feature_metadata({
                "FeatureGroupName": name, "FeatureName": "f1",
                "Description": f"v{next(updates)}"}, REGION),
            lambda out: out == {}, max(5, rounds // 2))
    list_cpu = ops["ListFeatureGroups_page_of_100"]["cpu_us_per_call"]
    return {
        "benchmark": "sagemaker_control",
        "groups": groups, "features_per_group": features,
        "feature_records": groups * features,
        "create": create,
        "search_feature_metadata_first_call": cold,
        "operations": ops,
        "ratios_to_a_list_page_cpu": {
            k: round(v["cpu_us_per_call"] / list_cpu, 2) for k, v in ops.items()},
        "noise": {"loadavg_before": [round(x, 2) for x in load_before],
                  "loadavg_after": [round(x, 2) for x in os.getloadavg()],
                  "cpus": os.cpu_count()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", type=int, default=300)
    parser.add_argument("--features", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "results" / "sagemaker_control.json")
    args = parser.parse_args()
    report = run(args.groups, args.features, args.rounds)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
