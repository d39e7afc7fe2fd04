"""Write examples/web/shop.json: the catalogue and a few shoppers of the web page, from our synthetic generator.

    python examples/web/make_shop.py [OUT.json]

Everything comes from `din_export.synthetic.generate` with seed 0, the table models/demo was trained on
(never from real data): every item with its category and price, three new arrivals the model never saw
(ids past the catalogue, so their item id is out of vocabulary), and shoppers whose histories are their
clicks, oldest first: a new visitor (no history), three shoppers of the seed-0 table with short, medium and
long histories, and a regular with more clicks than the model's max_len of 50. The regular comes from a
table drawn with the same seed and catalogue but more events per shopper (the catalogue is drawn first,
so it does not depend on the number of shoppers or events; this script checks it).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from din_export.synthetic import SyntheticConfig, generate

SEED = 0
OUT = Path(__file__).with_name("shop.json")
NEW_ARRIVALS = 3
HISTORY_TARGETS = (4, 12, 30)  # click counts of the picked seed-0 shoppers (the nearest ones are taken)


def catalogue(events: pd.DataFrame) -> pd.DataFrame:
    items = events.drop_duplicates("item")[["item", "category", "price"]]
    return items.sort_values("item", ignore_index=True)


def shopper(events: pd.DataFrame, user: int, name: str, user_id: str) -> dict:
    mine = events[events["user"] == user]
    clicks = mine[mine["label"] == 1]  # events are in time order: histories are oldest first
    first = mine.iloc[0]
    return {"name": name, "user_id": user_id, "gender": str(first["gender"]), "age": int(first["age"]),
            "hist_item_id": [str(i) for i in clicks["item"]], "hist_cate_id": list(clicks["category"])}


def build() -> dict:
    events = generate(SyntheticConfig(), SEED)
    items = catalogue(events)
    regulars = generate(SyntheticConfig(users=5, min_events=200, max_events=200), SEED)
    same = catalogue(regulars).merge(items, on="item", suffixes=("", "_0"))
    if not ((same["category"] == same["category_0"]) & (same["price"] == same["price_0"])).all():
        sys.exit("the catalogue drawn for the regular differs from the seed-0 table's; pick shoppers another way")

    clicks = events[events["label"] == 1].groupby("user").size()
    shoppers = [{"name": "New visitor (no history)", "user_id": "new-visitor", "gender": "F", "age": 31,
                 "hist_item_id": [], "hist_cate_id": []}]
    for target in HISTORY_TARGETS:
        user = int((clicks - target).abs().idxmin())
        shoppers.append(shopper(events, user, f"Shopper {user} ({clicks[user]} clicks)", str(user)))
    regular_clicks = regulars[regulars["label"] == 1].groupby("user").size()
    user = int(regular_clicks.idxmax())
    shoppers.append(shopper(regulars, user, f"Regular ({regular_clicks[user]} clicks; the model reads the last 50)",
                            f"regular-{user}"))

    catalog = [{"item_id": str(r.item), "cate_id": r.category, "price": float(r.price)} for r in items.itertuples()]
    # New arrivals: ids past the catalogue, in the categories the picked shoppers click most, at their median price.
    favourite = pd.Series([c for s in shoppers for c in s["hist_cate_id"]]).value_counts().index[:NEW_ARRIVALS]
    next_id = int(items["item"].max()) + 1
    for k, category in enumerate(favourite):
        price = round(float(items.loc[items["category"] == category, "price"].median()), 2)
        catalog.append({"item_id": str(next_id + k), "cate_id": category, "price": price, "new": True})
    return {"source": f"din_export.synthetic.generate, seed {SEED} (examples/web/make_shop.py)",
            "catalog": catalog, "shoppers": shoppers}


def main(out: Path) -> None:
    shop = build()
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(shop, separators=(",", ":")) + "\n", encoding="utf-8")
    tmp.replace(out)
    print(f"wrote {out}: {len(shop['catalog'])} items, shoppers: " + "; ".join(s["name"] for s in shop["shoppers"]))


if __name__ == "__main__":
    if len(sys.argv) > 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]) if len(sys.argv) == 2 else OUT)
