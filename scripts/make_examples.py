"""Pick examples/requests.jsonl from a synthetic dataset's test requests (our generator's data, never real).

    python scripts/make_examples.py DATA_DIR OUT.jsonl

DATA_DIR is `din-export prepare --source synthetic` output. The picks are deterministic: for each
(shortest history, label, target category already in the history) below, the first test request in
file order from a user not picked yet. Each gets a `request_id` (pass-through for `din-score --id-field`).
Line 4 (a click on a category the shopper clicked before) is the one the README's attention picture shows.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# (min history length, label, target category seen in the history)
PICKS = [(0, 0, False), (3, 1, True), (5, 0, False), (12, 1, True), (8, 0, True), (20, 1, True), (25, 0, False),
         (30, 1, True)]


def choose(requests: list[dict]) -> list[dict]:
    chosen: list[dict] = []
    users: set[str] = set()
    for min_len, label, seen in PICKS:
        for r in requests:
            hist = r["hist_cate_id"]
            if (r["user_id"] not in users and len(hist) >= min_len and (min_len > 0 or not hist)
                    and r["label"] == label and (r["cate_id"] in hist) == seen):
                users.add(r["user_id"])
                chosen.append({"request_id": f"example-{len(chosen) + 1}", **r})
                break
        else:
            sys.exit(f"no test request with a history of at least {min_len}, label {label} and target category "
                     f"{'in' if seen else 'not in'} the history")
    return chosen


def main(data_dir: Path, out: Path) -> None:
    with (data_dir / "test_requests.jsonl").open(encoding="utf-8") as f:
        requests = [json.loads(line) for line in f]
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in choose(requests)), encoding="utf-8")
    tmp.replace(out)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
