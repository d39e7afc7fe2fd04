"""Readers (tiny fixtures written here), the two protocols, the dataset directory and `din-export prepare`.

Protocol checks recompute the expected samples independently from the raw events (pandas, sorted by
(timestamp, file row)) and compare them with what `prepare` wrote.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from din_export.cli.prepare import prepare_command
from din_export.data import load_split, load_splits
from din_export.prepare import EXPLICIT, IMPLICIT, PrepareError, prepare
from din_export.schema import OOV_INDEX, PAD_INDEX, Schema
from din_export.sources import (
    SourceError,
    events_from_frame,
    read_amazon,
    read_events,
    read_movielens,
    read_taobao,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ML100K = DATA / "movielens-100k"
TAOBAO = DATA / "taobao-userbehavior-head" / "UserBehavior.csv"
SPLITS = ("train", "valid", "test")


# ---------------------------------------------------------------------------------------------------
# helpers


def load_dir(d: Path) -> tuple[Schema, dict[str, dict[str, np.ndarray]], dict[str, list[str]]]:
    schema = Schema.load(d)
    splits = {s: dict(split) for s, split in load_splits(d, SPLITS, schema).items()}
    vocabs = {p.stem: json.loads(p.read_text()) for p in (d / "vocab").glob("*.json")}
    return schema, splits, vocabs


def requests(d: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (d / f"{split}_requests.jsonl").read_text().splitlines()]


def decode(vocab: list[str], idx: np.ndarray) -> list:
    """Indices -> raw ids (None for OOV); padding must not be passed."""
    assert (idx != PAD_INDEX).all()
    return [None if i == OOV_INDEX else vocab[i - 2] for i in idx.tolist()]


def sorted_events(frame: pd.DataFrame) -> pd.DataFrame:
    """The tie rule, independently: (user, timestamp, file row)."""
    f = frame.assign(row=np.arange(len(frame)))
    return f.sort_values(["user", "timestamp", "row"], kind="stable")


def implicit_frame(seed: int = 1, users: int = 25, items: int = 40) -> pd.DataFrame:
    """Events with duplicate (user, item) pairs and many equal timestamps."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(users):
        for _ in range(rng.integers(2, 14)):
            it = int(rng.integers(0, items))
            rows.append({"user": f"u{u}", "item": f"i{it}", "category": f"c{it % 5}",
                         "timestamp": int(rng.integers(0, 6))})
    return pd.DataFrame(rows).sample(frac=1.0, random_state=seed).reset_index(drop=True)


def explicit_frame(seed: int = 2, users: int = 40, items: int = 30) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(users):
        for _ in range(rng.integers(1, 15)):
            it = int(rng.integers(0, items))
            rows.append({"user": u, "item": it, "category": f"g{it % 4}", "timestamp": int(rng.integers(0, 5)),
                         "label": int(rng.random() < 0.5), "gender": "MF"[u % 2], "age": 20.0 + u})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------
# readers


def write_ml100k(root: Path, ratings: str) -> Path:
    root.mkdir()
    (root / "u.data").write_text(ratings)
    flags = {"1": [0, 0, 0, 1, 1] + [0] * 14, "2": [0, 1, 1] + [0] * 16, "3": [0] * 16 + [1, 0, 0]}
    lines = [f"{i}|Caf\u00e9 {i} (1995)|01-Jan-1995||http://x|" + "|".join(map(str, f)) for i, f in flags.items()]
    (root / "u.item").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    (root / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
    return root


def test_movielens_100k_reader(tmp_path: Path) -> None:
    root = write_ml100k(tmp_path / "ml", "1\t1\t5\t100\n1\t2\t3\t90\n2\t3\t4\t50\n")
    ev = read_movielens(root)
    f = ev.frame
    assert ev.explicit and ev.sparse == ("gender", "occupation") and ev.dense == ("age",)
    assert f["category"].astype(str).tolist() == ["Animation", "Action", "Thriller"]  # first flag set
    assert f["label"].tolist() == [1, 0, 1]
    assert f["gender"].astype(str).tolist() == ["M", "M", "F"] and f["age"].tolist() == [24.0, 24.0, 53.0]
    assert f["timestamp"].dtype == np.int64


def test_movielens_1m_reader(tmp_path: Path) -> None:
    root = tmp_path / "ml1m"
    root.mkdir()
    (root / "ratings.dat").write_text("1::10::4::978300760\n2::20::2::978300761\n")
    (root / "movies.dat").write_bytes("10::Am\u00e9lie (2001)::Comedy|Romance\n20::Heat (1995)::Action|Crime\n"
                                      .encode("latin-1"))
    (root / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    f = read_movielens(root).frame
    assert f["item"].astype(str).tolist() == ["10", "20"]
    assert f["category"].astype(str).tolist() == ["Comedy", "Action"]
    assert f["gender"].astype(str).tolist() == ["F", "M"] and f["occupation"].astype(str).tolist() == ["10", "16"]
    assert f["age"].tolist() == [1.0, 56.0] and f["label"].tolist() == [1, 0]


@pytest.mark.parametrize(("ratings", "needle"), [
    ("1\t1\t5\t100\n1\t9\t3\t90\n", "line 2, field 'item'"),  # movie not in u.item
    ("1\t1\t5\t100\n7\t2\t3\t90\n", "line 2, field 'user'"),
    ("1\t1\t5\t100\n1\t2\tx\t90\n", "line 2, field 'rating'"),
    ("1\t1\t6\t100\n", "line 1, field 'rating'"),
    ("1\t1\t5\n", "line 1, field 'timestamp'"),
])
def test_movielens_errors_name_line_and_field(tmp_path: Path, ratings: str, needle: str) -> None:
    with pytest.raises(SourceError, match=needle):
        read_movielens(write_ml100k(tmp_path / "ml", ratings))


def test_movielens_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="neither u.data"):
        read_movielens(tmp_path)


T0 = 1511539200


def test_taobao_reader_counts_drops(tmp_path: Path) -> None:
    p = tmp_path / "ub.csv"
    p.write_text(f"1,10,100,pv,{T0}\n1,11,100,cart,{T0 + 1}\n1,12,101,pv,{T0 - 1}\n"
                 f"2,13,102,pv\n2,14,103,pv,{T0 + 5}\n3,15,104,pv,15")  # cut inside the timestamp
    ev = read_taobao(p, chunk_rows=2)  # chunks smaller than the file
    st = ev.stats
    assert st["rows_read"] == 6 and st["incomplete_rows"] == 1 and st["other_behaviours"] == 1
    # the cut final line parses ("15" is digits) but its timestamp is out of the window: counted there
    assert st["out_of_window"] == 2 and st["truncated_final_line"] == 0
    assert ev.frame["item"].astype(str).tolist() == ["10", "14"]
    assert not ev.explicit and ev.sparse == ()
    everything = read_taobao(p, behaviours=("pv", "cart", "fav", "buy"))
    assert everything.frame["item"].astype(str).tolist() == ["10", "11", "14"]


@pytest.mark.parametrize("tail", ["3,15,104,p", "3,15", "3,15,104,pv,"])
def test_taobao_unterminated_last_line_dropped(tmp_path: Path, tail: str) -> None:
    p = tmp_path / "ub.csv"
    p.write_text(f"1,10,100,pv,{T0}\n" + tail)
    ev = read_taobao(p)
    assert ev.stats["truncated_final_line"] == 1 and ev.stats["rows_read"] == 1 and len(ev.frame) == 1


@pytest.mark.parametrize("before", ["", "2,13,102,pv\n"], ids=["clean", "after-incomplete-row"])
def test_taobao_complete_unterminated_last_line_kept(tmp_path: Path, before: str) -> None:
    p = tmp_path / "ub.csv"
    p.write_text(f"{before}1,10,100,pv,{T0}\n1,11,100,pv,{T0 + 9}")
    ev = read_taobao(p)
    assert ev.stats["truncated_final_line"] == 0 and len(ev.frame) == 2


@pytest.mark.parametrize(("text", "needle"), [
    (f"1,10,100,pv,{T0}\n1,11,100,click,{T0}\n", "line 2, field 'behavior'"),
    (f"1,10,100,pv,{T0}\n\n1,x,100,pv,{T0}\n", "line 3, field 'item'"),
    (f"1,10,100,pv,{T0},7\n", "line 1: more than 5 fields"),
    (f"1,10,100,pv,{T0}\n1,10,100,pv,{T0},7,8\n", "not a 5-field CSV.*line 2"),
    ("", "ub.csv: the file is empty"),
])
def test_taobao_errors(tmp_path: Path, text: str, needle: str) -> None:
    p = tmp_path / "ub.csv"
    p.write_text(text)
    with pytest.raises(SourceError, match=needle):
        read_taobao(p)


def amazon_files(tmp_path: Path, literal: bool) -> tuple[Path, Path]:
    reviews = [{"reviewerID": "A1", "asin": "B1", "unixReviewTime": 30, "overall": 5.0},
               {"reviewerID": "A1", "asin": "B2", "unixReviewTime": 10},
               {"reviewerID": "A2", "asin": "B3", "unixReviewTime": 20},
               {"reviewerID": "A2", "asin": "B9", "unixReviewTime": 25}]  # B9 has no categories
    meta = [{"asin": "B1", "categories": [["Electronics", "Audio"], ["Electronics", "Cables", "HDMI"]],
             "title": "it's \"quoted\""},
            {"asin": "B2", "categories": [["Books"]]},
            {"asin": "B3", "categories": [["Electronics", "Camera"]]},
            {"asin": "B7", "categories": [["Unused"]]},
            {"asin": "B9", "categories": []}]
    dump = repr if literal else json.dumps
    r, m = tmp_path / "reviews.json", tmp_path / "meta.json"
    r.write_text("\n".join(dump(x) for x in reviews) + "\n")
    m.write_text("\n".join(dump(x) for x in meta) + "\n")
    return r, m


@pytest.mark.parametrize("literal", [False, True], ids=["json", "python-literal"])
def test_amazon_reader(tmp_path: Path, literal: bool) -> None:
    r, m = amazon_files(tmp_path, literal)
    if literal:
        assert "'asin'" in m.read_text()  # the old dumps' format really is not JSON
    ev = read_amazon(r, m)
    f = ev.frame
    assert f["item"].astype(str).tolist() == ["B1", "B2", "B3"]
    assert f["category"].astype(str).tolist() == ["HDMI", "Books", "Camera"]  # last of the last path
    assert f["timestamp"].tolist() == [30, 10, 20]
    assert ev.stats["reviews_without_category"] == 1 and not ev.explicit


def test_amazon_literal_eval_never_runs_code(tmp_path: Path) -> None:
    r, m = amazon_files(tmp_path, literal=False)
    flag = tmp_path / "pwned"
    r.write_text(f"__import__('pathlib').Path({str(flag)!r}).touch()\n")
    with pytest.raises(SourceError, match="line 1: neither JSON nor a Python literal"):
        read_amazon(r, m)
    assert not flag.exists()


def test_amazon_errors(tmp_path: Path) -> None:
    r, m = amazon_files(tmp_path, literal=False)
    r.write_text('{"reviewerID": "A1", "asin": "B1", "unixReviewTime": 3}\n{"reviewerID": "A1", "asin": "B2"}\n')
    with pytest.raises(SourceError, match="line 2, field 'unixReviewTime': missing field"):
        read_amazon(r, m)
    with pytest.raises(SourceError, match="metadata file"):
        read_amazon(r, tmp_path / "nope.json")


def events_csv(tmp_path: Path, frame: pd.DataFrame, name: str = "ev.csv") -> Path:
    p = tmp_path / name
    if p.suffix == ".parquet":
        frame.to_parquet(p, index=False)
    else:
        frame.to_csv(p, index=False)
    return p


@pytest.mark.parametrize("name", ["ev.csv", "ev.parquet"])
def test_events_reader(tmp_path: Path, name: str) -> None:
    df = explicit_frame().assign(extra="ignored")
    ev = read_events(events_csv(tmp_path, df, name), sparse="gender", dense="age", chunk_rows=7)
    f = ev.frame
    assert ev.explicit and ev.sparse == ("gender",) and ev.dense == ("age",)
    assert "extra" not in f.columns and len(f) == len(df)
    assert f["user"].astype(str).tolist() == df["user"].astype(str).tolist()  # ints compared as str()
    assert f["label"].tolist() == df["label"].tolist() and f["age"].tolist() == df["age"].tolist()


def test_events_parquet_datetime_timestamps(tmp_path: Path) -> None:
    df = explicit_frame().head(5)
    df["timestamp"] = pd.to_datetime(df["timestamp"] + 1_600_000_000, unit="s")
    ev = read_events(events_csv(tmp_path, df, "ev.parquet"))
    assert ev.frame["timestamp"].tolist() == (explicit_frame().head(5)["timestamp"] + 1_600_000_000).tolist()


def test_implicit_all_users_with_three_items(tmp_path: Path) -> None:
    frame = pd.DataFrame({"user": ["u"] * 3 + ["v"] * 3, "item": list("abcdef"), "category": ["k"] * 6,
                          "timestamp": [0, 1, 2] * 2})
    with pytest.raises(PrepareError, match="no training sample"):
        prepare(events_from_frame(frame), tmp_path / "d")


def test_events_csv_and_parquet_prepare_identically(tmp_path: Path) -> None:
    df = explicit_frame()
    outs = []
    for name in ("ev.csv", "ev.parquet"):
        ev = read_events(events_csv(tmp_path, df, name), sparse="gender", dense="age")
        prepare(ev, tmp_path / f"out-{name}", max_len=4, seed=3)
        outs.append(load_dir(tmp_path / f"out-{name}"))
    for s in SPLITS:
        for k, v in outs[0][1][s].items():
            np.testing.assert_array_equal(v, outs[1][1][s][k])
    assert outs[0][2] == outs[1][2]


@pytest.mark.parametrize(("mutate", "kwargs", "needle"), [
    (lambda d: d.drop(columns="category"), {}, r"missing column\(s\) \['category'\]"),
    (lambda d: d, {"sparse": "colour"}, r"missing column\(s\) \['colour'\]"),
    (lambda d: d.assign(label=[2] + [0] * (len(d) - 1)), {}, r"line 2, field 'label': label must be 0 or 1 \(got 2\)"),
    (lambda d: d.assign(timestamp=[1005.5] * len(d)), {}, r"line 2, field 'timestamp': .*\(got 1005\.5\)"),
    (lambda d: d.assign(timestamp=["x"] * len(d)), {}, "line 2, field 'timestamp'"),
    (lambda d: d.assign(age=["old"] * len(d)), {"dense": "age"}, "line 2, field 'age'"),
    (lambda d: d.assign(item=[None] + d["item"].tolist()[1:]), {}, "line 2, field 'item': missing id"),
    (lambda d: d, {"sparse": "label"}, "reserved"),
])
def test_events_errors(tmp_path: Path, mutate: object, kwargs: dict, needle: str) -> None:
    p = events_csv(tmp_path, mutate(explicit_frame()))
    with pytest.raises(SourceError, match=needle):
        read_events(p, **kwargs)


def test_events_bad_files(tmp_path: Path) -> None:
    (tmp_path / "e.parquet").write_text("not parquet")
    with pytest.raises(SourceError, match="not a readable Parquet"):
        read_events(tmp_path / "e.parquet")
    (tmp_path / "e.json").write_text("{}")
    with pytest.raises(SourceError, match="unknown events format"):
        read_events(tmp_path / "e.json")
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(SourceError, match="e.csv: the file is empty"):
        read_events(tmp_path / "e.csv")
    with pytest.raises(SourceError, match="not found"):
        read_events(tmp_path / "missing.csv")


# ---------------------------------------------------------------------------------------------------
# implicit protocol


@pytest.fixture(scope="module")
def implicit_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    frame = implicit_frame()
    out = tmp_path_factory.mktemp("implicit") / "data"
    prepare(events_from_frame(frame), out, max_len=3, seed=7)
    return out, frame


def expected_sequences(frame: pd.DataFrame) -> dict[str, list[str]]:
    seqs = {}
    for user, g in sorted_events(frame).groupby("user", sort=False):
        seqs[user] = list(dict.fromkeys(g["item"]))  # first occurrence of each item, in order
    return seqs


def test_implicit_leave_last_out(implicit_dir: tuple[Path, pd.DataFrame]) -> None:
    out, frame = implicit_dir
    schema, splits, vocabs = load_dir(out)
    stats = json.loads((out / "stats.json").read_text())
    assert schema.protocol == IMPLICIT and [s.name for s in schema.sparse] == ["user_id"]
    seqs = {u: s for u, s in expected_sequences(frame).items() if len(s) >= 3}
    assert stats["events"]["users_dropped_too_few_positives"] == len(expected_sequences(frame)) - len(seqs)
    assert stats["users"]["total"] == len(seqs) > 10
    for split, pos in (("test", -1), ("valid", -2)):
        reqs = requests(out, split)
        assert len(reqs) == 2 * len(seqs) == len(splits[split]["label"])
        got = {r["user_id"]: r for r in reqs if r["label"] == 1}
        for user, seq in seqs.items():
            r = got[user]
            assert r["item_id"] == seq[pos]
            assert r["hist_item_id"] == seq[:len(seq) + pos][-3:]  # strictly earlier, most recent 3
            assert r["hist_cate_id"] == [f"c{i[1:] and int(i[1:]) % 5}" for i in r["hist_item_id"]]
    # train: per user, positives are seq[1:-2] in order, each followed by its negative
    tr = splits["train"]
    users = decode(vocabs["user_id"], tr["user_id"])
    items = decode(vocabs["item_id"], tr["item_id"])
    assert (tr["label"][0::2] == 1).all() and (tr["label"][1::2] == 0).all()
    for user, seq in seqs.items():
        mine = [it for u, it, y in zip(users, items, tr["label"], strict=True) if u == user and y == 1]
        assert mine == seq[1:-2]
        assert seq[-1] not in mine and seq[-2] not in mine  # no valid/test target among its train targets


def test_implicit_negatives_never_touched(implicit_dir: tuple[Path, pd.DataFrame]) -> None:
    out, frame = implicit_dir
    touched = frame.groupby("user")["item"].agg(set).to_dict()
    _, splits, vocabs = load_dir(out)
    tr = splits["train"]
    neg = tr["label"] == 0
    for u, it in zip(decode(vocabs["user_id"], tr["user_id"][neg]), decode(vocabs["item_id"], tr["item_id"][neg]),
                     strict=True):
        assert it not in touched[u]
    for split in ("valid", "test"):
        for r in requests(out, split):
            if r["label"] == 0:
                assert r["item_id"] not in touched[r["user_id"]]
                assert r["cate_id"] == f"c{int(r['item_id'][1:]) % 5}"  # the negative's own category
    # the negative shares its positive's history
    np.testing.assert_array_equal(tr["hist_item_id"][0::2], tr["hist_item_id"][1::2])


def test_implicit_negative_pools(tmp_path: Path) -> None:
    # train negatives come from the items the train split shows (the items before each user's
    # validation target, for users with a train sample), validation/test negatives from the items
    # that are some user's validation/test target; an item never shown in train never reaches it
    # a user with 3 items of their own has no train sample: "s0" is only in validation/test histories
    solo = pd.DataFrame({"user": "solo", "item": ["s0", "s1", "s2"], "category": "c9", "timestamp": [0, 1, 2]})
    frame = pd.concat([implicit_frame(), solo], ignore_index=True)
    out = tmp_path / "d"
    prepare(events_from_frame(frame), out, max_len=3, seed=7)
    seqs = {u: s for u, s in expected_sequences(frame).items() if len(s) >= 3}
    train_items = {it for s in seqs.values() if len(s) > 3 for it in s[:-2]}
    assert "s0" not in train_items
    pools = {"train": train_items, "valid": {s[-2] for s in seqs.values()}, "test": {s[-1] for s in seqs.values()}}
    held_out_only = (pools["valid"] | pools["test"]) - train_items
    assert held_out_only  # the fixture must exercise the rule
    _, splits, vocabs = load_dir(out)
    tr = splits["train"]
    negatives = set(decode(vocabs["item_id"], tr["item_id"][tr["label"] == 0]))
    assert negatives <= train_items and len(negatives) > 1
    for split in ("valid", "test"):
        drawn = {r["item_id"] for r in requests(out, split) if r["label"] == 0}
        assert drawn <= pools[split] and len(drawn) > 1
    # nothing of a held-out target leaks into train: the item vocabulary is exactly the train items
    assert set(vocabs["item_id"]) == train_items
    assert not held_out_only & set(vocabs["item_id"])
    stats = json.loads((out / "stats.json").read_text())
    assert stats["negative_pool_items"] == {s: len(p) for s, p in pools.items()}


def test_implicit_negative_pool_exhausted(tmp_path: Path) -> None:
    # both users' validation target is "v": the validation pool {v} holds nothing either may get
    frame = pd.DataFrame({"user": ["a"] * 4 + ["b"] * 4, "item": ["x", "y", "v", "t1", "z", "w", "v", "t2"],
                          "category": ["c"] * 8, "timestamp": [0, 1, 2, 3] * 2})
    with pytest.raises(PrepareError, match=r"user 'a' touched every one of the 1 items at valid positions"):
        prepare(events_from_frame(frame), tmp_path / "d")
    assert not (tmp_path / "d").exists()


def test_split_arrays(implicit_dir: tuple[Path, pd.DataFrame]) -> None:
    out, _ = implicit_dir
    schema, splits, vocabs = load_dir(out)
    for s in SPLITS:
        z = splits[s]
        n = len(z["label"])
        expected = {*schema.targets, *schema.histories, *(f.name for f in schema.sparse), "hist_len", "label", "group"}
        assert set(z) == expected
        for k in (*schema.targets, *(f.name for f in schema.sparse), "hist_len", "group"):
            assert z[k].dtype == np.int64 and z[k].shape == (n,)
        for k in schema.histories:
            assert z[k].dtype == np.int64 and z[k].shape == (n, schema.max_len)
            steps = np.arange(schema.max_len)[None, :]
            assert ((z[k] == PAD_INDEX) == (steps >= z["hist_len"][:, None])).all()  # right-padded with 0
        assert z["label"].dtype == np.float32 and set(np.unique(z["label"])) <= {0.0, 1.0}
        for f in schema.behaviour:
            assert z[f.target].max() < schema.vocab_sizes[f.vocab]
    for name, size in schema.vocab_sizes.items():
        assert len(vocabs[name]) + 2 == size
        freq = np.load(out / "freq" / f"{name}.npy")
        assert freq.dtype == np.int64 and freq.shape == (size,) and freq[PAD_INDEX] == freq[OOV_INDEX] == 0
    tr = splits["train"]
    real = tr["hist_item_id"][tr["hist_item_id"] != PAD_INDEX]
    item_freq = np.load(out / "freq" / "item_id.npy")
    np.testing.assert_array_equal(item_freq, np.bincount(np.concatenate([tr["item_id"], real]),
                                                         minlength=len(item_freq)))
    assert (item_freq[2:] > 0).all()  # the vocabulary holds exactly the ids that occur in train


def test_vocab_from_train_only(tmp_path: Path) -> None:
    # each user rates three shared movies and one of their own: the own movies of valid/test users
    # (and their categories) never occur in train, so they must be OOV there and absent from the vocab
    rows = []
    for u in range(20):
        for t, (item, cate) in enumerate([("a", "x"), ("b", "x"), ("c", "y"), (f"own{u}", f"cat{u}")]):
            rows.append({"user": u, "item": item, "category": cate, "timestamp": t, "label": int(t != 2)})
    out = tmp_path / "d"
    stats = prepare(events_from_frame(pd.DataFrame(rows)), out, max_len=4, seed=1)
    _, splits, vocabs = load_dir(out)
    held_out = {int(r["user_id"]) for s in ("valid", "test") for r in requests(out, s)}
    train_users = set(range(20)) - held_out
    assert set(vocabs["item_id"]) == {"a", "b", "c"} | {f"own{u}" for u in train_users}
    assert set(vocabs["cate_id"]) == {"x", "y"} | {f"cat{u}" for u in train_users}
    for s in ("valid", "test"):
        own = [i for i, r in enumerate(requests(out, s)) if r["item_id"].startswith("own")]
        assert own and (splits[s]["item_id"][own] == OOV_INDEX).all()
        assert (splits[s]["cate_id"][own] == OOV_INDEX).all()
        assert stats["oov"][s]["item_id"] == len(own)
    assert OOV_INDEX not in splits["train"]["item_id"]


def test_determinism(tmp_path: Path) -> None:
    ev = events_from_frame(implicit_frame())
    dirs = [tmp_path / n for n in ("a", "b", "c")]
    for d, seed in zip(dirs, (5, 5, 6), strict=True):
        prepare(ev, d, max_len=3, seed=seed)
    a, b, c = (load_dir(d) for d in dirs)
    for s in SPLITS:
        for k in a[1][s]:
            np.testing.assert_array_equal(a[1][s][k], b[1][s][k])
    assert (a[0].to_dict(), a[2]) == (b[0].to_dict(), b[2])
    assert (dirs[0] / "test_requests.jsonl").read_text() == (dirs[1] / "test_requests.jsonl").read_text()
    # another seed draws other negatives
    assert a[2]["item_id"] != c[2]["item_id"] or not np.array_equal(a[1]["train"]["item_id"], c[1]["train"]["item_id"])


def test_tie_rule_file_order(tmp_path: Path) -> None:
    # all at one timestamp: file order decides, whatever the ids' own order
    frame = pd.DataFrame({"user": ["u"] * 4 + ["v"] * 4, "item": ["z", "y", "x", "w", "a", "b", "c", "d"],
                          "category": ["k"] * 8, "timestamp": [7] * 8})
    out = tmp_path / "d"
    prepare(events_from_frame(frame), out, max_len=5)
    test = {r["user_id"]: r for r in requests(out, "test") if r["label"] == 1}
    assert test["u"]["item_id"] == "w" and test["u"]["hist_item_id"] == ["z", "y", "x"]


# ---------------------------------------------------------------------------------------------------
# explicit protocol


def test_explicit_user_split(tmp_path: Path) -> None:
    frame = explicit_frame()
    out = tmp_path / "d"
    stats = prepare(events_from_frame(frame, sparse="gender", dense="age"), out, max_len=3, seed=11)
    schema, splits, vocabs = load_dir(out)
    assert schema.protocol == EXPLICIT
    assert [f.name for f in schema.sparse] == ["gender"] and [f.name for f in schema.dense] == ["age"]
    # users are disjoint across splits
    groups = {s: set(splits[s]["group"].tolist()) for s in SPLITS}
    assert not (groups["train"] & groups["valid"]) and not (groups["train"] & groups["test"])
    assert not (groups["valid"] & groups["test"]) and all(groups.values())
    req_users = {s: {r["user_id"] for r in requests(out, s)} for s in ("valid", "test")}
    assert not req_users["valid"] & req_users["test"]

    # every rating at position >= 1 is a sample; history = clicks strictly earlier, most recent 3
    expected = {}
    for user, g in sorted_events(frame).groupby("user", sort=False):
        items, labels = g["item"].astype(str).tolist(), g["label"].tolist()
        expected[str(user)] = [
            (items[i], labels[i], [it for it, y in zip(items[:i], labels[:i], strict=True) if y][-3:])
            for i in range(1, len(items))]
    for split in ("valid", "test"):
        got: dict[str, list] = {}
        for r in requests(out, split):
            got.setdefault(r["user_id"], []).append((r["item_id"], r["label"], r["hist_item_id"]))
            assert r["age"] == 20 + int(r["user_id"]) and r["gender"] == "MF"[int(r["user_id"]) % 2]
        assert got == {u: expected[u] for u in got}
        assert sum(len(v) for v in got.values()) == stats["samples"][split]
    # train rows decode to the same (all their ids are in the train vocabulary)
    tr = splits["train"]
    train_rows = sorted((it, int(y), tuple(decode(vocabs["item_id"], h[:n]))) for it, y, h, n in zip(
        decode(vocabs["item_id"], tr["item_id"]), tr["label"], tr["hist_item_id"], tr["hist_len"], strict=True))
    valid_test = req_users["valid"] | req_users["test"]
    want = sorted((it, y, tuple(h)) for u, rows in expected.items() if u not in valid_test for it, y, h in rows)
    assert train_rows == want
    # dense statistics from train rows only
    age = tr["dense"][:, 0].astype(np.float64)
    assert schema.dense[0].mean == pytest.approx(age.mean(), rel=1e-6)
    assert schema.dense[0].std == pytest.approx(age.std(), rel=1e-6)


def test_explicit_history_all(tmp_path: Path) -> None:
    # --history all: every earlier event (MovieLens: every movie rated before), clicked or not
    frame = explicit_frame()
    out = tmp_path / "d"
    stats = prepare(events_from_frame(frame), out, max_len=3, seed=11, history="all")
    assert stats["history"] == "all" and Schema.load(out).extra["history"] == "all"
    expected = {}
    for user, g in sorted_events(frame).groupby("user", sort=False):
        items, labels = g["item"].astype(str).tolist(), g["label"].tolist()
        expected[str(user)] = [(items[i], labels[i], items[:i][-3:]) for i in range(1, len(items))]
    for split in ("valid", "test"):
        got: dict[str, list] = {}
        for r in requests(out, split):
            got.setdefault(r["user_id"], []).append((r["item_id"], r["label"], r["hist_item_id"]))
        assert got and got == {u: expected[u] for u in got}
    # the same users and samples as the default history, only the histories differ
    clicks = prepare(events_from_frame(frame), tmp_path / "c", max_len=3, seed=11)
    assert clicks["history"] == "clicks" and clicks["samples"] == stats["samples"]
    with pytest.raises(PrepareError, match="history must be one of"):
        prepare(events_from_frame(frame), tmp_path / "x", history="rated")


def test_explicit_too_few_users(tmp_path: Path) -> None:
    frame = explicit_frame(users=3)
    with pytest.raises(PrepareError, match="cannot be split"):
        prepare(events_from_frame(frame), tmp_path / "d")
    assert not any(tmp_path.iterdir())  # nothing half-written


# ---------------------------------------------------------------------------------------------------
# CLI


def run(args: list[str]) -> object:
    return CliRunner().invoke(prepare_command, args)


def test_cli_events_and_overwrite(tmp_path: Path) -> None:
    p = events_csv(tmp_path, explicit_frame())
    out = tmp_path / "data"
    res = run(["--source", "events", str(p), "--out", str(out), "--sparse-features", "gender",
               "--dense-features", "age", "--max-len", "4"])
    assert res.exit_code == 0, res.output
    assert "samples: train" in res.output and "vocab sizes:" in res.output
    assert Schema.load(out).max_len == 4
    res = run(["--source", "events", str(p), "--out", str(out)])
    assert res.exit_code != 0 and "--force" in res.output
    res = run(["--source", "events", str(p), "--out", str(out), "--force", "--max-len", "2"])
    assert res.exit_code == 0, res.output
    assert Schema.load(out).max_len == 2
    assert sorted(x.name for x in tmp_path.iterdir()) == ["data", "ev.csv"]  # no temporary leftovers


@pytest.mark.parametrize(("args", "needle"), [
    (["--source", "movielens", "--out", "X"], "needs a PATH"),
    (["--source", "amazon", "r.json", "--out", "X"], "--meta"),
    (["--source", "events", "MISSING.csv", "--out", "X"], "events file not found"),
    (["--source", "taobao", "ev.csv", "--out", "X", "--sparse-features", "a"], "only apply to --source events"),
])
def test_cli_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], needle: str) -> None:
    monkeypatch.chdir(tmp_path)
    res = run(args)
    assert res.exit_code != 0 and needle in res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "X").exists()


def test_cli_missing_column_is_clean(tmp_path: Path) -> None:
    p = events_csv(tmp_path, explicit_frame().drop(columns="timestamp"))
    res = run(["--source", "events", str(p), "--out", str(tmp_path / "d")])
    assert res.exit_code == 1 and "missing column(s) ['timestamp']" in res.output
    assert not (tmp_path / "d").exists() and isinstance(res.exception, SystemExit)  # ClickException, no traceback


def test_cli_synthetic_default(tmp_path: Path) -> None:
    res = run(["--source", "synthetic", "--out", str(tmp_path / "s"), "--max-len", "8"])
    assert res.exit_code == 0, res.output
    schema = Schema.load(tmp_path / "s")
    assert schema.source == "synthetic" and schema.protocol == EXPLICIT
    assert [f.name for f in schema.dense] == ["age", "price"]


# ---------------------------------------------------------------------------------------------------
# hostile files: every reader stops with the file, line and field, exit 1, never a traceback

REVIEW = b'{"reviewerID": "A1", "asin": "B1", "unixReviewTime": 5}\n'
META = b'{"asin": "B1", "categories": [["Books"]]}\n'
TB_ROW = f"1,10,100,pv,{T0}\n".encode()
EV_HEAD = b"user,item,category,timestamp\nu,i,c,1\n"  # line 3 is the first line a case adds
BINARY = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00"  # the first bytes of a PNG image
ML_ITEM = "1|Caf\u00e9 (1995)|01-Jan-1995||http://x|" + "|".join(["0"] * 18 + ["1"]) + "\n"


def amazon(reviews: bytes = REVIEW, meta: bytes = META, name: str = "reviews.json") -> tuple[dict, list[str]]:
    return {name: reviews, "meta.json": meta}, ["--source", "amazon", name, "--meta", "meta.json"]


def taobao(data: bytes) -> tuple[dict, list[str]]:
    return {"ub.csv": data}, ["--source", "taobao", "ub.csv"]


def events(data: bytes, name: str = "ev.csv", *extra: str) -> tuple[dict, list[str]]:
    return {name: data}, ["--source", "events", name, *extra]


def movielens(data: bytes = b"1\t1\t5\t100\n", user: bytes = b"1|24|M|technician|85711\n") -> tuple[dict, list[str]]:
    # u.item is latin-1 in the real ml-100k, so its é must stay readable
    return ({"ml/u.data": data, "ml/u.item": ML_ITEM.encode("latin-1"), "ml/u.user": user},
            ["--source", "movielens", "ml"])


def parquet(table: pa.Table) -> tuple[dict, list[str]]:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return events(sink.getvalue().to_pybytes(), "ev.parquet")


def not_utf8_strings(*values: bytes) -> pa.Array:
    """A Parquet string column holding bytes that are not UTF-8 (pyarrow's constructors refuse them)."""
    offsets = np.cumsum([0, *map(len, values)]).astype(np.int32)
    return pa.Array.from_buffers(pa.string(), len(values), [None, pa.py_buffer(offsets.tobytes()),
                                                            pa.py_buffer(b"".join(values))])


def ev_table(**cols: object) -> pa.Table:
    base = {"user": ["u", "u"], "item": ["i", "j"], "category": ["c", "c"], "timestamp": [1, 2]}
    return pa.table({**base, **cols})


HOSTILE = {
    # Amazon reviews and metadata
    "amazon-deep-nesting": (amazon(b"[" * 100_000 + b"]" * 100_000 + b"\n"), "reviews.json: line 1: nested too deeply"),
    "amazon-5000-digit-time": (amazon(REVIEW + b'{"reviewerID": "A1", "asin": "B2", "unixReviewTime": '
                                      + b"9" * 5000 + b"}\n"),
                               "reviews.json: line 2, field 'unixReviewTime': integer out of the 64-bit range"),
    "amazon-30-digit-time": (amazon(REVIEW + b'{"reviewerID": "A1", "asin": "B2", "unixReviewTime": "'
                                    + b"9" * 30 + b'"}\n'),
                             "line 2, field 'unixReviewTime': integer out of the 64-bit range"),
    "amazon-latin1-id": (amazon(REVIEW + b'{"reviewerID": "caf\xe9", "asin": "x", "unixReviewTime": 5}\n'),
                         "reviews.json: line 2, field 'reviewerID': not UTF-8 text (byte 0xe9 at column 20)"),
    "amazon-lone-surrogate-id": (amazon(REVIEW + b'{"reviewerID": "\\ud800", "asin": "x", "unixReviewTime": 5}\n'),
                                 "line 2, field 'reviewerID': holds a lone surrogate"),
    "amazon-unhashable-literal": (amazon(REVIEW + b"{'reviewerID': 'A1', ('k', [1]): 1}\n"),
                                  "line 2: neither JSON nor a Python literal (unhashable"),
    "amazon-binary": (amazon(BINARY), "reviews.json: line 1: not UTF-8 text (byte 0x89"),
    "amazon-empty": (amazon(b""), "reviews.json: no reviews"),
    "amazon-gzip-cut-short": (amazon(gzip.compress(REVIEW * 200, mtime=0)[:-30], name="reviews.json.gz"),
                              "reviews.json.gz: cannot read past line"),
    "amazon-not-gzip": (amazon(REVIEW, name="reviews.json.gz"), "reviews.json.gz: cannot read it (Not a gzipped file"),
    "amazon-meta-latin1": (amazon(meta=b'{"asin": "B1", "categories": [["Caf\xe9"]]}\n'),
                           "meta.json: line 1, field 'categories': not UTF-8 text"),
    "amazon-meta-deep": (amazon(meta=META + b'{"asin": "B2", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"),
                         "meta.json: line 2: nested too deeply"),
    # Taobao UserBehavior
    "taobao-latin1": (taobao(TB_ROW + f"1,1\xe9,100,pv,{T0}\n".encode("latin-1")),
                      "ub.csv: line 2, field 'item': not UTF-8 text (byte 0xe9 at column 4)"),
    "taobao-30-digit-id": (taobao(TB_ROW + f"1,{'9' * 30},100,pv,{T0}\n".encode()),
                           "ub.csv: line 2, field 'item': integer out of the 64-bit range"),
    "taobao-5000-digit-time": (taobao(TB_ROW + f"1,10,100,pv,{'9' * 5000}\n".encode()),
                               "ub.csv: line 2, field 'timestamp': integer out of the 64-bit range"),
    "taobao-stray-quote": (taobao(TB_ROW + f'1,"10,100,pv,{T0}\n'.encode() + TB_ROW),
                           "ub.csv: line 2, field 'item': expected an integer"),
    "taobao-binary": (taobao(BINARY), "ub.csv: line 1, field 'user': not UTF-8 text (byte 0x89"),
    "taobao-empty": (taobao(b""), "ub.csv: the file is empty"),
    # events CSV / TSV
    "csv-latin1": (events(EV_HEAD + b"u,caf\xe9,c,2\n"), "ev.csv: line 3, field 'item': not UTF-8 text (byte 0xe9"),
    "tsv-latin1": (events(EV_HEAD.replace(b",", b"\t") + b"u\tcaf\xe9\tc\t2\n", "ev.tsv"),
                   "ev.tsv: line 3, field 'item': not UTF-8 text"),
    "csv-latin1-header": (events(b"us\xe9r,item,category,timestamp\n"), "ev.csv: line 1: not UTF-8 text"),
    "csv-20-digit-time": (events(EV_HEAD + b"u,i,c," + b"9" * 20 + b"\n"),
                          "ev.csv: line 3, field 'timestamp': integer out of the 64-bit range"),
    "csv-2^63-time": (events(EV_HEAD + b"u,i,c,9223372036854775808\n"),  # would wrap to -2**63
                      "ev.csv: line 3, field 'timestamp': integer out of the 64-bit range"),
    "csv-rounded-float-time": (events(EV_HEAD + b"u,i,c,9007199254740993.0\n"),  # float64 makes it ...992
                               "line 3, field 'timestamp': too large for a floating-point value to be exact"),
    "csv-401-digit-dense": (events(b"user,item,category,timestamp,age\nu,i,c,1,1\nu,i,c,2,1" + b"0" * 400 + b"\n",
                                   "ev.csv", "--dense-features", "age"),
                            "ev.csv: line 3, field 'age': expected a finite number"),
    "csv-dense-beyond-float32": (events(b"user,item,category,timestamp,age\nu,i,c,1,1\nu,i,c,2,1e39\n",
                                        "ev.csv", "--dense-features", "age"),
                                 "ev.csv: line 3, field 'age': beyond the float32 range"),
    "csv-duplicate-header": (events(b"user,item,category,timestamp,timestamp\nu,i,c,1,2\n"),
                             "ev.csv: line 1: the header has two columns named 'timestamp'"),
    "csv-binary": (events(BINARY), "ev.csv: line 1: not UTF-8 text (byte 0x89"),
    "csv-empty": (events(b""), "ev.csv: the file is empty"),
    "csv-header-only": (events(b"user,item,category,timestamp\n"), "ev.csv: no rows"),
    # events Parquet (rows count from 1)
    "parquet-uint64-time": (parquet(ev_table(timestamp=pa.array([1, 2**64 - 1], pa.uint64()))),
                            "ev.parquet: line 2, field 'timestamp': integer out of the 64-bit range"),
    "parquet-decimal-time": (parquet(ev_table(timestamp=pa.array([1, 10**37], pa.decimal128(38, 0)))),
                             "ev.parquet: line 2, field 'timestamp': integer out of the 64-bit range"),
    "parquet-duration-time": (parquet(ev_table(timestamp=pa.array([1, 2], pa.duration("s")))),
                              "line 1, field 'timestamp': expected an integer or a timestamp, not a duration"),
    "parquet-not-utf8": (parquet(ev_table(item=not_utf8_strings(b"i", b"caf\xe9"))),
                         "ev.parquet: line 2, field 'item': not UTF-8 text (byte 0xe9)"),
    "parquet-list-ids": (parquet(ev_table(item=[[1], [2]])), "line 1, field 'item': ids must be strings or integers"),
    "parquet-duplicate-columns": (parquet(pa.Table.from_arrays([pa.array(["u"]), pa.array(["i"]), pa.array(["c"]),
                                                                pa.array([1]), pa.array([2])],
                                                               names=["user", "item", "category", "timestamp",
                                                                      "timestamp"])),
                                  "ev.parquet: the Parquet file has two columns named 'timestamp'"),
    "parquet-empty-file": (events(b"", "ev.parquet"), "ev.parquet: not a readable Parquet file"),
    # MovieLens (u.item is latin-1 on purpose: only u.data must be UTF-8)
    "movielens-latin1-rating": (movielens(b"1\t1\t5\t100\n1\t1\xe9\t5\t100\n"),
                                "u.data: line 2, field 'item': not UTF-8 text (byte 0xe9"),
    "movielens-binary-ratings": (movielens(BINARY), "u.data: line 1, field 'user': not UTF-8 text"),
    "movielens-30-digit-user": (movielens(b"1\t1\t5\t100\n" + b"9" * 30 + b"\t1\t5\t100\n"),
                                "u.data: line 2, field 'user': integer out of the 64-bit range"),
    "movielens-400-digit-age": (movielens(user=b"1|" + b"9" * 400 + b"|M|technician|85711\n"),
                                "u.user: line 1, field 'age': integer out of the 64-bit range"),
    "movielens-empty-ratings": (movielens(b""), "u.data: the file is empty (no ratings)"),
    "movielens-empty-users": (movielens(user=b""), "u.user: the file is empty"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_file_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    (files, args), needle = HOSTILE[case]
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    monkeypatch.chdir(tmp_path)
    res = run([*args, "--out", "out"])
    assert res.exit_code == 1, res.output
    assert isinstance(res.exception, SystemExit), res.exception  # a ClickException, not an escaped error
    assert "Traceback" not in res.output and needle in res.output, res.output
    assert len(res.output) < 400  # a 5000-digit value is shown shortened
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["amazon-deep-nesting", "amazon-5000-digit-time", "amazon-latin1-id"])
def test_hostile_file_real_process(tmp_path: Path, case: str) -> None:
    (files, args), needle = HOSTILE[case]
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    proc = subprocess.run([sys.executable, "-c", "from din_export.cli import main; main()", "prepare", *args,
                           "--out", "out"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and needle in proc.stderr, proc.stderr


def test_exact_large_integers_and_bom_are_read(tmp_path: Path) -> None:
    """Not errors: int64 values float64 cannot hold, text timestamps, a leading BOM, 50-digit ids."""
    big = 2**63 - 1
    p = tmp_path / "ev.parquet"
    pq.write_table(ev_table(timestamp=["9007199254740993", str(big)]), p)
    assert read_events(p).frame["timestamp"].tolist() == [9007199254740993, big]
    p = tmp_path / "ev.csv"
    p.write_bytes(b"\xef\xbb\xbf" + EV_HEAD + f"u,j,c,{big}\n".encode())
    assert read_events(p).frame["timestamp"].tolist() == [1, big]
    r, m = tmp_path / "r.json", tmp_path / "m.json"
    r.write_bytes(b"\xef\xbb\xbf" + REVIEW + b'{"reviewerID": "A1", "asin": ' + b"7" * 50
                  + f', "unixReviewTime": {big}}}\n'.encode())
    m.write_bytes(META + b'{"asin": "' + b"7" * 50 + b'", "categories": [["Books"]]}\n')
    f = read_amazon(r, m).frame
    assert f["item"].astype(str).tolist() == ["B1", "7" * 50] and f["timestamp"].tolist() == [5, big]


# ---------------------------------------------------------------------------------------------------
# real data (skipped where ../shared/data is absent)


@pytest.mark.skipif(not ML100K.is_dir(), reason="movielens-100k not available")
def test_movielens_100k_real(tmp_path: Path) -> None:
    stats = prepare(read_movielens(ML100K), tmp_path / "ml", seed=0)
    ev = read_movielens(ML100K)
    users = ev.frame["user"].nunique()
    assert stats["users"]["total"] == users
    assert stats["users"]["train"] + stats["users"]["valid"] + stats["users"]["test"] == users
    assert stats["users"]["valid"] == stats["users"]["test"] == round(users * 0.1)
    # every rating but each user's first is a sample
    assert sum(stats["samples"].values()) == len(ev.frame) - users
    total_pos = sum(stats["positives"].values())
    first_clicks = int(sorted_events(ev.frame).groupby("user", observed=True)["label"].first().sum())
    assert total_pos == int(ev.frame["label"].sum()) - first_clicks
    assert 0.45 < stats["positive_rate"]["train"] < 0.65
    schema = Schema.load(tmp_path / "ml")
    assert schema.vocab_sizes["cate_id"] <= 19 + 2 and schema.vocab_sizes["gender"] == 4
    first = requests(tmp_path / "ml", "test")[0]
    assert set(first) == {"user_id", "gender", "occupation", "age", "item_id", "cate_id", "hist_item_id",
                          "hist_cate_id", "label"}


@pytest.mark.skipif(not TAOBAO.is_file(), reason="taobao head not available")
def test_taobao_real(tmp_path: Path) -> None:
    ev = read_taobao(TAOBAO)
    raw_lines = TAOBAO.read_bytes().count(b"\n")  # complete lines; the cut one has no newline
    assert ev.stats["truncated_final_line"] == 1 and ev.stats["rows_read"] == raw_lines
    assert ev.stats["incomplete_rows"] == 0 and ev.stats["out_of_window"] > 0
    stats = prepare(ev, tmp_path / "tb", seed=0)
    users = stats["users"]["total"]
    assert stats["samples"]["valid"] == stats["samples"]["test"] == 2 * users
    assert stats["positive_rate"] == {"train": 0.5, "valid": 0.5, "test": 0.5}
    assert Schema.load(tmp_path / "tb").sparse[0].name == "user_id"
    assert stats["events"]["events_used"] == len(ev.frame) - stats["events"]["duplicate_events_dropped"] \
        - stats["events"]["events_of_dropped_users"]
    # most held-out targets here are items no training position shows, so a leak-free split needs
    # negatives that are as often out of the vocabulary, and item identity must carry no signal
    for split in ("valid", "test"):
        z = load_split(tmp_path / "tb", split)
        oov, label = z["item_id"] == OOV_INDEX, z["label"] == 1
        assert oov[label].mean() > 0.5
        assert abs(oov[label].mean() - oov[~label].mean()) < 0.05


def test_cli_amazon_end_to_end(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    reviews, meta = tmp_path / "reviews.json", tmp_path / "meta.json"
    reviews.write_text("".join(
        repr({"reviewerID": f"A{u}", "asin": f"B{i}", "unixReviewTime": int(t)}) + "\n"
        for u in range(6) for t, i in enumerate(rng.choice(12, 5, replace=False))))
    meta.write_text("".join(json.dumps({"asin": f"B{i}", "categories": [["Root", f"Leaf{i % 3}"]]}) + "\n"
                            for i in range(12)))
    out = tmp_path / "amz"
    res = run(["--source", "amazon", str(reviews), "--meta", str(meta), "--out", str(out), "--max-len", "3"])
    assert res.exit_code == 0, res.output
    schema = Schema.load(out)
    assert (schema.source, schema.protocol) == ("amazon", IMPLICIT)
    test = requests(out, "test")
    assert len(test) == 12 and {r["user_id"] for r in test} == {f"A{u}" for u in range(6)}
    assert all(r["cate_id"] == f"Leaf{int(r['item_id'][1:]) % 3}" for r in test)
    assert all(len(r["hist_item_id"]) == 3 for r in test)
