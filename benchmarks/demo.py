"""The demo as a new user waits for it: `convlens demo` cold (an empty model cache, so the
built-in network is trained first; apt and pip already done) and warm (the model cached), in one
run, each in its own process. Prints one JSON line: wall seconds of each run, the training's
seconds and test accuracy, and each atlas stage's seconds (from the stage markers).

Targets: cold at most 360 s, warm at most 60 s, on this 2-core machine.
Run: python benchmarks/demo.py [--warm-only]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS = {"cold": 360, "warm": 60}


def run_demo(out: Path, cache: Path | None) -> float:
    """Wall seconds of `convlens demo --out out`, with `cache` as the model cache when given."""
    env = dict(os.environ)
    if cache is not None:
        env["CONVLENS_CACHE"] = str(cache)
    started = time.perf_counter()
    command = [sys.executable, "-m", "convlens", "demo", "--out", str(out)]
    subprocess.run(command, check=True, env=env, capture_output=True)
    return time.perf_counter() - started


def stage_seconds(out: Path) -> dict[str, float]:
    """Each stage's seconds, as its marker recorded them."""
    return {
        marker.stem: json.loads(marker.read_text()).get("seconds")
        for marker in sorted((out / ".stages").glob("*.json"))
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--warm-only", action="store_true", help="skip the cold run (training)")
    args = parser.parse_args()
    found: dict = {"load_average": [round(v, 2) for v in os.getloadavg()]}
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        if not args.warm_only:
            cache = root / "cache"
            found["cold_seconds"] = round(run_demo(root / "cold", cache), 1)
            trained = json.loads((cache / "models" / "zfnet-fashion" / "final.json").read_text())
            found["training_seconds"] = trained["seconds"]
            found["test_accuracy"] = trained["test_accuracy"]
            found["cold_stages"] = stage_seconds(root / "cold")
        found["warm_seconds"] = round(run_demo(root / "warm", None), 1)
        found["warm_stages"] = stage_seconds(root / "warm")
    found["meets_target"] = all(
        found[f"{kind}_seconds"] <= limit
        for kind, limit in TARGETS.items()
        if f"{kind}_seconds" in found
    )
    print(json.dumps(found), flush=True)


if __name__ == "__main__":
    main()
