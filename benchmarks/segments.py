"""What a load generator returns for one timed run, and how runs add up into one figure."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Segment:
    """One timed run of one body at one concurrency: per-call latencies of the measured part."""

    latencies_us: np.ndarray  # succeeded calls only
    seconds: float  # measured duration (warm-up excluded)
    failed: int = 0
    # Filled in by the runner: wall time (warm-up included) and, over it, CPU seconds of the
    # server, the load generator and everything else on the machine (the noise).
    wall_s: float = 0.0
    server_cpu_s: float = 0.0
    generator_cpu_s: float = 0.0
    other_cpu_s: float = 0.0
    server_calls: int = 0  # calls the server answered OK (warm-up included)


@dataclass
class Cell:
    """All segments of one (method, concurrency), possibly with different bodies."""

    method: str
    concurrency: int
    items_per_call: int = 1  # records per call: 100 for BatchGetRecord(100), 500 for PutRecords
    segments: list[Segment] = field(default_factory=list)

    def add(self, seg: Segment) -> None:
        self.segments.append(seg)

    def rates(self) -> list[float]:
        """Calls per second of each segment, in order (one per round)."""
        return [s.latencies_us.size / s.seconds for s in self.segments if s.seconds]

    def summary(self) -> dict[str, float | int]:
        lat = np.concatenate([s.latencies_us for s in self.segments]) / 1000.0
        seconds = sum(s.seconds for s in self.segments)
        calls = int(lat.size)
        out: dict[str, float | int] = {
            "concurrency": self.concurrency,
            "calls": calls,
            "failed": sum(s.failed for s in self.segments),
            "seconds": round(seconds, 3),
            "calls_per_s": round(calls / seconds, 1) if seconds else 0.0,
            "calls_per_s_by_round": [round(r, 1) for r in self.rates()],
            "records_per_s": round(calls * self.items_per_call / seconds, 1) if seconds else 0.0,
            "p50_ms": _pct(lat, 50),
            "p90_ms": _pct(lat, 90),
            "p99_ms": _pct(lat, 99),
            "mean_ms": round(float(lat.mean()), 4) if calls else 0.0,
            "max_ms": round(float(lat.max()), 4) if calls else 0.0,
        }
        calls_ok = sum(s.server_calls for s in self.segments)
        wall = sum(s.wall_s for s in self.segments)
        if calls_ok:
            cpu = sum(s.server_cpu_s for s in self.segments)
            out["server_cpu_us_per_call"] = round(cpu * 1e6 / calls_ok, 1)
        if wall:
            # Average cores busy while the cell ran (warm-up included), of the machine's 2.
            for key, attr in (("server_cores", "server_cpu_s"),
                              ("generator_cores", "generator_cpu_s"),
                              ("other_processes_cores", "other_cpu_s")):
                out[key] = round(sum(getattr(s, attr) for s in self.segments) / wall, 2)
        return out


def _pct(values_ms: np.ndarray, q: float) -> float:
    return round(float(np.percentile(values_ms, q)), 4) if values_ms.size else 0.0
