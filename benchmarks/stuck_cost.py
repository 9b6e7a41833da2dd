"""The stuck-value detector's and the waveform saturation check's cost, in process.

Stuck detector: ``--sensors`` QM30VT2s (default 2000), each with its own ``StuckWatch``
(the default rule: 7 features of 2 channels judged), ``--readings`` polls each (default
1000). Every poll's registers are decoded by the real ``assemble`` (the poller's own path);
the detector's CPU is measured against it. Register values are drawn at the register's
resolution around a level, so coarse ones repeat as they do on a live sensor; every 10th
sensor answers one fixed set of registers (frozen: flagged stuck once its runs are long
enough, ``min_duration_s`` 0 here so that the flagged path is measured too). The learned
state (tracemalloc, the watches only) is taken after a tenth of the readings and at the
end: it must not grow with the readings.

Saturation check: ``WaveLimits.clipped`` on int16 snapshots (counts and the scaled
samples), against decoding the same snapshot from base64 and the agent's feature
computation of it, and the stuck detector's hash of the waveform's bytes.

    python benchmarks/stuck_cost.py [--sensors 2000] [--readings 1000]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import sys
import time
import tracemalloc
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from drivers.modbus._plan import plan_profile  # noqa: E402
from drivers.modbus._readings import assemble  # noqa: E402
from drivers.payloads._waveforms import WaveLimits  # noqa: E402
from drivers.profiles import load_profile  # noqa: E402
from drivers.reading import utc_now  # noqa: E402
from drivers.stuck import StuckRule, StuckWatch  # noqa: E402


def _answers(plan, rng: random.Random, level: float) -> list[list[int]]:  # type: ignore[no-untyped-def]
    """One poll's words: each register near ``level`` of its valid range, at its resolution."""
    out = []
    for block in plan.blocks:
        words = [0] * block.count
        for reg, _, offset in block._decoders:
            lo, hi = reg.valid if reg.valid is not None else (0.0, 100.0)
            value = lo + (hi - lo) * level * (1 + rng.gauss(0, 0.02))
            raw = round((value - reg.offset) / reg.scale)
            words[offset // 2] = max(0, min(0x7FF0, raw)) & 0xFFFF
        out.append(words)
    return out


def stuck_cost(n_sensors: int, n_readings: int, seed: int = 1) -> dict[str, object]:
    profile = load_profile("banner-qm30vt2")
    plan = plan_profile(profile)
    rng = random.Random(seed)
    # A pool of polls per sensor shape, drawn once: the benchmark times decoding and the
    # detector, not the random numbers.
    pool = [_answers(plan, rng, rng.uniform(0.01, 0.2)) for _ in range(997)]
    frozen = pool[0]
    rule = StuckRule(min_duration_s=0.0)
    watches = [StuckWatch(rule) for _ in range(n_sensors)]
    now = utc_now()
    t_assemble = t_stuck = 0.0
    readings_total = flagged = 0
    pc = time.process_time
    for i in range(n_readings):
        mono = float(i)
        for s, watch in enumerate(watches):
            answers = frozen if s % 10 == 0 else pool[(s * 7919 + i) % len(pool)]
            t0 = pc()
            readings, _ = assemble(plan, answers, now, mono_s=mono, sensor_id=f"s{s}",
                                   transport="modbus", all_zero_fault=True)  # fmt: skip
            t1 = pc()
            readings, frozen_flags = watch.check(readings)
            t2 = pc()
            t_assemble += t1 - t0
            t_stuck += t2 - t1
            readings_total += len(readings)
            flagged += bool(frozen_flags)
    keys = sum(len(w._runs) for w in watches)
    # The watches' learned state, measured by building it again under tracemalloc: the
    # same keys and runs (a run holds one value, whatever the readings taken).
    tracemalloc.start()
    m0 = tracemalloc.get_traced_memory()[0]
    state = _replay(rule, plan, pool, frozen, n_sensors, 100)
    mem_100 = tracemalloc.get_traced_memory()[0] - m0
    del state
    tracemalloc.stop()
    tracemalloc.start()
    m0 = tracemalloc.get_traced_memory()[0]
    state = _replay(rule, plan, pool, frozen, n_sensors, n_readings)
    mem_end = tracemalloc.get_traced_memory()[0] - m0
    del state
    tracemalloc.stop()
    return {
        "sensors": n_sensors,
        "polls_per_sensor": n_readings,
        "readings": readings_total,
        "polls_with_stuck_values": flagged,
        "assemble_us_per_poll": round(1e6 * t_assemble / (n_sensors * n_readings), 2),
        "stuck_us_per_poll": round(1e6 * t_stuck / (n_sensors * n_readings), 2),
        "stuck_over_assemble": round(t_stuck / t_assemble, 2),
        "stuck_cpu_share_of_one_core_at_1hz": round(t_stuck / n_readings, 4),
        "learned_keys": keys,
        "learned_keys_per_sensor": keys / n_sensors,
        "state_bytes_after_100_polls": mem_100,
        f"state_bytes_after_{n_readings}_polls": mem_end,
        "state_bytes_per_key": round(mem_end / max(1, keys), 1),
    }


def _replay(rule, plan, pool, frozen, n_sensors, n_polls):  # type: ignore[no-untyped-def]
    """The watches after ``n_polls`` polls each, with the readings built beforehand."""
    now = utc_now()
    watches = [StuckWatch(rule) for _ in range(n_sensors)]
    for i in range(n_polls):
        for s, watch in enumerate(watches):
            answers = frozen if s % 10 == 0 else pool[(s * 7919 + i) % len(pool)]
            readings, _ = assemble(plan, answers, now, mono_s=float(i), sensor_id=f"s{s}",
                                   transport="modbus", all_zero_fault=True)  # fmt: skip
            watch.check(readings)
            del readings
    return watches


def _per_us(fn: Callable[[], object], k: int) -> float:
    t0 = time.process_time()
    for _ in range(k):
        fn()
    return 1e6 * (time.process_time() - t0) / k


def _decode_b64(b64: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(b64), "<i2").astype(np.float64) * 0.001


def _digest(samples: np.ndarray) -> int:
    return hash(samples.tobytes())  # what the stuck detector keeps of a waveform


def saturation_cost(repeats: int = 2000) -> list[dict[str, object]]:
    from agent.analysis.features import waveform_features  # the agent's own features

    rng = np.random.default_rng(1)
    limits, full_scale = WaveLimits(), WaveLimits(full_scale_g=16.0)
    out = []
    for n in (2048, 8192, 25600):
        raw = np.clip(rng.normal(0, 3000, n), -32768, 32767).astype("<i2")
        b64 = base64.b64encode(raw.tobytes()).decode()
        samples = raw.astype(np.float64) * 0.001
        decode = _per_us(partial(_decode_b64, b64), repeats)
        clip_raw = _per_us(partial(limits.clipped, samples, raw), repeats)
        clip_float = _per_us(partial(full_scale.clipped, samples, None), repeats)
        digest = _per_us(partial(_digest, samples), repeats)
        feats = _per_us(partial(waveform_features, samples, 25600.0), max(20, repeats // 20))
        out.append({
            "samples": n,
            "decode_b64_us": round(decode, 1),
            "clipped_int16_us": round(clip_raw, 1),
            "clipped_float_us": round(clip_float, 1),
            "stuck_hash_us": round(digest, 1),
            "features_us": round(feats, 1),
            "clipped_over_decode": round(clip_raw / decode, 2),
            "clipped_plus_hash_over_features": round((clip_raw + digest) / feats, 3),
        })  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sensors", type=int, default=2000)
    parser.add_argument("--readings", type=int, default=1000, help="polls per sensor")
    args = parser.parse_args()
    result = {
        "benchmark": "stuck_cost",
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "stuck": stuck_cost(args.sensors, args.readings),
        "saturation": saturation_cost(),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
