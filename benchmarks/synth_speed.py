"""How fast does the synthetic celeb world generate: one process vs. Ray tasks on 2 cores?

Median of 3 alternating runs of each mode (single, ray, single, ray, ...), same world size, fresh
output folder each run; Ray is started once before timing. Also times DISFA video frames in one
process. Writes benchmarks/results/synth.json.

    python benchmarks/synth_speed.py [--people 24 --images-per-person 5 --runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import ray

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.synth.celeb_world import generate_celeb  # noqa: E402
from pipeline.synth.disfa_world import generate_disfa  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def timed(function, **kwargs) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one generation into a fresh folder."""
    out = tempfile.mkdtemp(prefix="synth-speed-")
    try:
        started, cpu = time.perf_counter(), time.process_time()
        function(out, **kwargs)
        return time.perf_counter() - started, time.process_time() - cpu
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=24)
    parser.add_argument("--images-per-person", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--disfa-frames", type=int, default=40)
    args = parser.parse_args()
    images = args.people * args.images_per_person
    world = dict(people=args.people, images_per_person=args.images_per_person)
    shard = max(1, args.people // (2 * args.cores))  # a few shards per core
    # Ray starts its workers at nice 15; on a busy shared machine they would then lose the CPU to
    # every ordinary process and the comparison would measure the neighbours. Same priority here.
    os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(num_cpus=args.cores, include_dashboard=False, log_to_driver=False)
    load_before = os.getloadavg()
    timed(generate_celeb, **world, seed=0, use_ray=True, people_per_shard=shard)  # warm workers

    seconds: dict[str, list[float]] = {"single_process": [], "ray": []}
    cpu_seconds = []
    for run in range(args.runs):
        wall, cpu = timed(generate_celeb, **world, seed=run + 1)
        seconds["single_process"].append(wall)
        cpu_seconds.append(cpu)
        wall, _ = timed(generate_celeb, **world, seed=run + 1, use_ray=True, people_per_shard=shard)
        seconds["ray"].append(wall)
        print(run, {k: round(v[-1], 2) for k, v in seconds.items()})
    ray.shutdown()
    disfa_seconds, disfa_cpu = timed(generate_disfa, subjects=1, frames=args.disfa_frames, seed=0)
    load_after = os.getloadavg()

    def summary(values: list[float]) -> dict:
        median = statistics.median(values)
        return {
            "seconds": [round(v, 2) for v in values],
            "median_seconds": round(median, 2),
            "images_per_second": round(images / median, 2),
        }

    single, parallel = summary(seconds["single_process"]), summary(seconds["ray"])
    single["cpu_ms_per_image"] = round(1000 * statistics.median(cpu_seconds) / images, 1)
    result = {
        "world": {**world, "images": images, "image_size": 256, "people_per_shard_ray": shard},
        "single_process": single,
        f"ray_{args.cores}_cores": parallel,
        "speedup": round(parallel["images_per_second"] / single["images_per_second"], 2),
        "disfa_single_process": {
            "frames": args.disfa_frames,
            "renders": 2 * args.disfa_frames,  # two cameras
            "seconds": round(disfa_seconds, 2),
            "video_frames_per_second": round(2 * args.disfa_frames / disfa_seconds, 2),
            "cpu_ms_per_frame": round(1000 * disfa_cpu / (2 * args.disfa_frames), 1),
            "frame_size": [360, 288],
        },
        "machine": {
            "cpu_count": os.cpu_count(),
            "load_average_before": [round(v, 2) for v in load_before],
            "load_average_after": [round(v, 2) for v in load_after],
        },
        "note": "wall-clock, includes JPEG encoding and writing every file; median of alternating "
        "runs; Ray workers at the same priority as the single process (RAY_worker_niceness=0)",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "synth.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
