"""The long fuzz run: the CI suite's Hypothesis strategies (tests/integration/fuzz_cases.py) for many
more cases against a real `bentoml serve`, one request at a time. Writes bench/results/fuzz.json:
cases per kind and status, every answer that broke the contract (a 5xx, a 4xx without an rgops
body, a 200 with non-finite output, a transport error) and whether the server still answered.

    .venv/bin/python bench/fuzz.py [--cases 3000] [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _serving_harness import KEY, device, local_stack  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "fuzz.json"
S_FUZZ = 32


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    import httpx
    from hypothesis import HealthCheck, given, seed, settings
    from hypothesis import strategies as st

    from tests.integration.fuzz_cases import all_cases, check_answer
    from tests.integration.test_services import _series_files

    series, _ = _series_files()
    counts: Counter[str] = Counter()
    broken: list[dict] = []
    with local_stack("  max_samples: 4\n") as (base, _, tmp):
        client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {KEY}"}, timeout=120)
        genes = tuple(client.get("/metadata").json()["models"]["rgops-gan"]["genes"])
        t0 = time.perf_counter()

        @seed(args.seed)
        @settings(max_examples=args.cases, database=None, deadline=None, phases=["generate"],
                  suppress_health_check=list(HealthCheck))
        @given(data=st.data())
        def run(data) -> None:  # noqa: ANN001
            case = data.draw(all_cases(series, genes[:50], 64))
            try:
                r = case.send(client)
                status, problem = r.status_code, check_answer(r.status_code, r.content)
            except httpx.HTTPError as exc:
                status, problem = 0, f"transport error {type(exc).__name__}"
            counts[f"{case.kind} {status}"] += 1
            if problem:
                broken.append({"kind": case.kind, "problem": problem})

        run()
        wall = time.perf_counter() - t0
        alive = client.get("/readyz").status_code == 200
    res = {"cases": sum(counts.values()), "seed": args.seed, "wall_s": wall, "broken": broken[:50],
           "n_broken": len(broken), "server_alive_after": alive, "by_kind_and_status": dict(sorted(counts.items())),
           "device": device(), "note": "2-core machine shared with other jobs"}
    print(f"{res['cases']} cases in {wall:.0f} s: {len(broken)} broke the contract; server alive: {alive}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(res, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
