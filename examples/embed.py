"""Embed din_runtime in an application: load a model directory, score two requests, rank candidates.

    python examples/embed.py MODEL_DIR

The requests are made up from the model's own vocabularies and the training means of its dense
features, so the script runs against any exported model; a real service would take them from its
request. Needs only numpy and onnxruntime (pip install 'din-toolkit[cpu]').
"""

from __future__ import annotations

import sys

from din_runtime import DinRuntimeError, Scorer


def main(model_dir: str) -> None:
    # Load once at start-up: this checks the model's hash and vocabularies. One Scorer serves all threads.
    scorer = Scorer.load(model_dir, device="auto")
    m = scorer.manifest
    ids = {name: list(vocab) for name, vocab in m.vocabs.items()}  # known raw ids in index order

    def known(vocab: str, k: int) -> str:
        return ids[vocab][k % len(ids[vocab])]

    user = {s.name: known(s.vocab, 0) for s in m.sparse}
    user.update({d["name"]: d.get("mean", 0.0) for d in m.raw["schema"].get("dense", [])})
    history = {b.history: [known(b.vocab, k) for k in range(1, 6)] for b in m.behaviour}

    rows = [{**user, **history, **{b.target: known(b.vocab, k) for b in m.behaviour}} for k in (6, 7)]
    for row, p in zip(rows, scorer.score(rows), strict=True):
        print(f"p(click | {m.behaviour[0].target}={row[m.behaviour[0].target]}) = {p:.4f}")

    # One user, many candidates: the user's profile and history are encoded once for all of them.
    candidates = [{b.target: known(b.vocab, k) for b in m.behaviour} for k in range(10, 30)]
    candidates.append({b.target: "never-seen-id" for b in m.behaviour})  # unseen ids score as OOV
    scores = scorer.score_candidates(user, history, candidates)
    # The group (user) field is not always a model input (models/demo does not read user_id).
    whose = f" for {m.group}={user[m.group]}" if m.group in user else ""
    print(f"top 5 of {len(candidates)} candidates{whose}:")
    for i in scores.argsort()[::-1][:5]:
        print(f"  {candidates[i][m.behaviour[0].target]:>20}  {scores[i]:.4f}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    try:
        main(sys.argv[1])
    except DinRuntimeError as e:
        sys.exit(f"error: {e}")
