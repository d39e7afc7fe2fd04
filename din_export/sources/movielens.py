"""MovieLens ml-100k and ml-1m: ratings, movies and users -> one events table with explicit labels
(rating >= 4) and the user profile as features."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from din_export.sources.table import Events, SourceError
from din_export.sources.validate import _bad, _check_file, _csv_errors, _first, _int64, _ints

# ml-100k genre flags, in u.item column order (u.genre lists the same names).
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
)
CLICK_RATING = 4


def _read_table(path: Path, sep: str, n_fields: int, encoding: str) -> list[tuple[int, list[str]]]:
    """Small metadata files (items, users): (line number, fields) per non-blank line."""
    _check_file(path, "MovieLens file")
    rows = []
    with open(path, encoding=encoding, newline="") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            parts = line.split(sep)
            if len(parts) != n_fields:
                raise SourceError(f"{path}: line {n}: expected {n_fields} fields separated by {sep!r}, "
                                  f"found {len(parts)}")
            rows.append((n, parts))
    if not rows:
        raise SourceError(f"{path}: the file is empty")
    return rows




def _ratings(path: Path, sep: str) -> pd.DataFrame:
    """user, item, rating, timestamp of a ratings file, checked; one row per line, file order."""
    _check_file(path, "MovieLens ratings file")
    data = path.read_bytes()
    if sep != "\t":
        # "::" is not a single-character separator; the files contain no tabs, so swap it for one
        data = data.replace(sep.encode(), b"\t")
    names = ["user", "item", "rating", "timestamp"]
    with _csv_errors(path, sep, names, "a ratings file with 4 fields per line"):
        df = pd.read_csv(io.BytesIO(data), sep="\t", header=None, names=names, dtype=str,
                         keep_default_na=False, na_values=[""], skip_blank_lines=False)
    if df.empty:
        raise SourceError(f"{path}: the file is empty (no ratings)")
    lines = np.arange(1, len(df) + 1)
    for name in names:
        if df[name].isna().any():
            raise _bad(path, int(lines[_first(df[name].isna().to_numpy())]), name, None,
                       "missing value (expected 4 fields per line)")
    rating = _ints(df["rating"], path, "rating", lines)
    bad = (rating < 1) | (rating > 5)
    if bad.any():
        i = _first(bad)
        raise _bad(path, int(lines[i]), "rating", int(rating[i]), "rating must be 1..5")
    return pd.DataFrame({
        "user": _ints(df["user"], path, "user", lines).astype(str),
        "item": _ints(df["item"], path, "item", lines).astype(str),
        "rating": rating.astype(np.int8),
        "timestamp": _ints(df["timestamp"], path, "timestamp", lines),
    })


def _ml100k_items(path: Path) -> dict[str, str]:
    genres = {}
    for n, parts in _read_table(path, "|", 5 + len(ML100K_GENRES), "latin-1"):
        item = str(_int64(path, n, "movie id", parts[0]))
        flags = parts[5:]
        for name, flag in zip(ML100K_GENRES, flags, strict=True):
            if flag not in ("0", "1"):
                raise _bad(path, n, f"genre {name}", flag, "genre flags must be 0 or 1")
        if "1" not in flags:
            raise _bad(path, n, "genres", "".join(flags), "the movie has no genre")
        genres[item] = ML100K_GENRES[flags.index("1")]
    return genres


def _ml1m_items(path: Path) -> dict[str, str]:
    genres = {}
    for n, parts in _read_table(path, "::", 3, "latin-1"):
        item = str(_int64(path, n, "MovieID", parts[0]))
        first = parts[2].split("|")[0].strip()
        if not first:
            raise _bad(path, n, "Genres", parts[2], "the movie has no genre")
        genres[item] = first
    return genres


def _users(path: Path, sep: str, order: tuple[int, int, int, int]) -> dict[str, tuple[str, str, float]]:
    """user -> (gender, occupation, age); `order` = field positions of id, age, gender, occupation."""
    i_id, i_age, i_gender, i_occ = order
    users = {}
    for n, parts in _read_table(path, sep, 5, "latin-1"):
        uid = str(_int64(path, n, "user id", parts[i_id]))
        users[uid] = (parts[i_gender], parts[i_occ], float(_int64(path, n, "age", parts[i_age])))
    return users


# name, ratings file and its separator, movie reader and file, user file, its separator and the
# positions of its id, age, gender and occupation fields; looked for in this order
VARIANTS = (
    ("ml-100k", "u.data", "\t", _ml100k_items, "u.item", "u.user", "|", (0, 1, 2, 3)),
    ("ml-1m", "ratings.dat", "::", _ml1m_items, "movies.dat", "users.dat", "::", (0, 2, 1, 3)),
)


def read_movielens(path: str | Path) -> Events:
    """ml-100k (u.data, u.item, u.user) or ml-1m (ratings.dat, movies.dat, users.dat) directory.

    Category = the movie's first genre (ml-100k: the first flag set, in u.genre order; ml-1m: the
    first name in `Genre1|Genre2`). label = rating >= 4. Profile: gender, occupation (sparse), age
    (dense; ml-1m stores the age bucket's lower bound).
    """
    root = Path(path)
    if not root.is_dir():
        raise SourceError(f"MovieLens directory not found: {root}")
    found = [v for v in VARIANTS if (root / v[1]).is_file()]
    if not found:
        raise SourceError(f"{root}: neither u.data (ml-100k) nor ratings.dat (ml-1m) is there")
    variant, ratings_file, ratings_sep, read_movies, movies_file, users_file, users_sep, user_fields = found[0]
    ratings_path = root / ratings_file
    ratings = _ratings(ratings_path, ratings_sep)
    genres = read_movies(root / movies_file)
    users = _users(root / users_file, users_sep, user_fields)

    category = ratings["item"].map(genres)
    if category.isna().any():
        i = int(np.flatnonzero(category.isna().to_numpy())[0])
        raise _bad(ratings_path, i + 1, "item", ratings["item"].iloc[i], "movie missing from the movie file")
    profile = ratings["user"].map(users)
    if profile.isna().any():
        i = int(np.flatnonzero(profile.isna().to_numpy())[0])
        raise _bad(ratings_path, i + 1, "user", ratings["user"].iloc[i], "user missing from the user file")
    gender, occupation, age = zip(*profile.tolist(), strict=True)
    frame = pd.DataFrame({
        "user": pd.Categorical(ratings["user"]),
        "item": pd.Categorical(ratings["item"]),
        "category": pd.Categorical(category),
        "timestamp": ratings["timestamp"].to_numpy(np.int64),
        "label": (ratings["rating"].to_numpy() >= CLICK_RATING).astype(np.int8),
        "rating": ratings["rating"].to_numpy(np.int8),
        "gender": pd.Categorical(list(gender)),
        "occupation": pd.Categorical(list(occupation)),
        "age": np.asarray(age, dtype=np.float64),
    })
    return Events(
        frame=frame, source="movielens", sparse=("gender", "occupation"), dense=("age",),
        stats={"rows_read": len(frame)},
        notes={"variant": variant, "category": "first genre of the movie",
               "label": f"rating >= {CLICK_RATING}"},
    )

