"""Writes the two example exports of tests/data (run from the repository root):

    python tests/data/make_examples.py

- ratings_example.tsv: a rating log in the classic layout, no header,
  `user<TAB>item<TAB>rating<TAB>epoch-seconds`, 90 users and 60 items in three
  taste groups over 2024, with two damaged lines.
- invoice_lines_example.csv: a retailer's invoice-line export, ISO-8859-1,
  `InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country`:
  orders of several lines, cancellations (`C` invoices with negative
  quantities), lines without a customer, ids written as `17850.0`, a `£` in a
  description. Customer 17850's rows are written by hand (the test checks its
  RFM against them); the rest are drawn with a fixed seed.

Deterministic: the same files on every run.
"""

from __future__ import annotations

import csv
import datetime as dt
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent


def ratings(rng: random.Random) -> list[str]:
    start = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    lines = []
    for user in range(1, 91):
        group = user % 3
        for _ in range(rng.randint(8, 30)):
            # Four ratings in five come from the user's own taste group.
            taste = group if rng.random() < 0.8 else rng.randrange(3)
            item = 100 + taste * 20 + int(rng.triangular(0, 20, 0))
            rating = rng.choice([3, 4, 4, 5, 5]) if taste == group else rng.choice([1, 2, 3])
            when = start + dt.timedelta(seconds=rng.randrange(366 * 86400))
            lines.append(f"{user}\t{item}\t{rating}\t{int(when.timestamp())}")
    lines.append("7\t101\t9\t1706745600")  # a rating out of range
    lines.append("8\t102\t4\tyesterday")  # a time that is no number
    return lines


# Customer 17850, by hand: two orders of several lines on the first day, a
# cancellation of part of the first, a later one-line order with a £ in its
# description.
HAND_ROWS = [
    (
        "536365",
        "85123A",
        "WHITE HANGING HEART T-LIGHT HOLDER",
        "6",
        "2010-12-01 08:26:00",
        "2.55",
        "17850.0",
    ),
    ("536365", "71053", "WHITE METAL LANTERN", "6", "2010-12-01 08:26:00", "3.39", "17850.0"),
    (
        "536365",
        "84406B",
        "CREAM CUPID HEARTS COAT HANGER",
        "8",
        "2010-12-01 08:26:00",
        "2.75",
        "17850.0",
    ),
    ("536366", "22633", "HAND WARMER UNION JACK", "6", "2010-12-01 08:28:00", "1.85", "17850.0"),
    ("536366", "22632", "HAND WARMER RED POLKA DOT", "6", "2010-12-01 08:28:00", "1.85", "17850"),
    (
        "C536391",
        "85123A",
        "WHITE HANGING HEART T-LIGHT HOLDER",
        "-2",
        "2010-12-01 10:24:00",
        "2.55",
        "17850.0",
    ),
    ("544001", "GV10", "GIFT VOUCHER £10", "1", "2011-02-14 12:00:00", "10.00", "17850.0"),
]

CATALOGUE = [
    ("22752", "SET 7 BABUSHKA NESTING BOXES", 7.65),
    ("21730", "GLASS STAR FROSTED T-LIGHT HOLDER", 4.25),
    ("22745", "POPPY'S PLAYHOUSE BEDROOM", 2.10),
    ("22748", "POPPY'S PLAYHOUSE KITCHEN", 2.10),
    ("22749", "FELTCRAFT PRINCESS CHARLOTTE DOLL", 3.75),
    ("22310", "IVORY KNITTED MUG COSY", 1.65),
    ("84969", "BOX OF 6 ASSORTED COLOUR TEASPOONS", 4.25),
    ("22623", "BOX OF VINTAGE JIGSAW BLOCKS", 4.95),
    ("22622", "BOX OF VINTAGE ALPHABET BLOCKS", 9.95),
    ("21754", "HOME BUILDING BLOCK WORD", 5.95),
    ("21755", "LOVE BUILDING BLOCK WORD", 5.95),
    ("21777", "RECIPE BOX WITH METAL HEART", 7.95),
    ("48187", "DOORMAT NEW ENGLAND", 7.95),
    ("22960", "JAM MAKING SET WITH JARS", 4.25),
    ("22913", "RED COAT RACK PARIS FASHION", 4.95),
    ("22912", "YELLOW COAT RACK PARIS FASHION", 4.95),
    ("22914", "BLUE COAT RACK PARIS FASHION", 4.95),
    ("21756", "BATH BUILDING BLOCK WORD", 5.95),
    ("22728", "ALARM CLOCK BAKELIKE PINK", 3.75),
    ("22727", "ALARM CLOCK BAKELIKE RED", 3.75),
    ("22726", "ALARM CLOCK BAKELIKE GREEN", 3.75),
    ("16236", "KITTY PENCIL ERASERS", 0.21),
    ("21094", "SET/6 RED SPOTTY PAPER PLATES", 0.85),
    ("84879", "ASSORTED COLOUR BIRD ORNAMENT", 1.69),
]


END = dt.datetime(2011, 12, 9, 12, 0)


def invoices(rng: random.Random) -> list[tuple[str, ...]]:
    rows = list(HAND_ROWS)
    start = dt.datetime(2010, 12, 1, 8, 0)
    number = 536400
    countries = ["United Kingdom", "United Kingdom", "France", "Germany", "EIRE"]
    for customer in range(12346, 12346 + 60):
        written = f"{customer}.0" if customer % 2 else str(customer)
        country = rng.choice(countries)
        taste = customer % 3
        shelf = CATALOGUE[taste * 8 : taste * 8 + 8]
        kind = customer % 4  # 0: one-off, 1: regular, 2: big baskets, 3: returner
        n_orders = {0: 1, 1: rng.randint(5, 12), 2: rng.randint(2, 4), 3: rng.randint(2, 6)}[kind]
        first = start + dt.timedelta(days=rng.randrange(200), minutes=rng.randrange(600))
        when = first
        for _ in range(n_orders):
            if when > END:
                break
            number += 1
            lines = rng.randint(1, 3) if kind != 2 else rng.randint(4, 8)
            picked = [
                rng.choice(shelf) if rng.random() < 0.85 else rng.choice(CATALOGUE)
                for _ in range(lines)
            ]
            order = []
            for code, name, price in picked:
                quantity = rng.choice([1, 2, 3, 6, 12]) * (4 if kind == 2 else 1)
                order.append(
                    (
                        str(number),
                        code,
                        name,
                        str(quantity),
                        f"{when:%Y-%m-%d %H:%M:%S}",
                        f"{price:.2f}",
                        written,
                        country,
                    )
                )
            rows += order
            if kind == 3 or rng.random() < 0.05:
                number += 1
                code, name, quantity, _, price = (
                    order[0][1],
                    order[0][2],
                    order[0][3],
                    None,
                    order[0][5],
                )
                back = when + dt.timedelta(days=rng.randint(1, 10))
                rows.append(
                    (
                        f"C{number}",
                        code,
                        name,
                        f"-{quantity}",
                        f"{back:%Y-%m-%d %H:%M:%S}",
                        price,
                        written,
                        country,
                    )
                )
            when += dt.timedelta(days=rng.randint(7, 45), minutes=rng.randrange(300))
    # Lines without a customer (about a quarter of a real export): whole walk-in
    # invoices.
    for _ in range(70):
        number += 1
        when = start + dt.timedelta(days=rng.randrange(370), minutes=rng.randrange(600))
        for _ in range(rng.randint(1, 4)):
            code, name, price = rng.choice(CATALOGUE)
            rows.append(
                (
                    str(number),
                    code,
                    name,
                    str(rng.randint(1, 6)),
                    f"{when:%Y-%m-%d %H:%M:%S}",
                    f"{price:.2f}",
                    "",
                    "United Kingdom",
                )
            )
    # A refund of a purchase made before the export begins: a return that
    # matches no purchase of the customer.
    rows.append(
        (
            "C536300",
            "22752",
            "SET 7 BABUSHKA NESTING BOXES",
            "-1",
            "2010-12-02 09:00:00",
            "7.65",
            "12999.0",
            "France",
        )
    )
    # A customer id that is no integer.
    rows.append(
        (
            "581001",
            "22310",
            "IVORY KNITTED MUG COSY",
            "2",
            "2011-12-01 10:00:00",
            "1.65",
            "13001.5",
            "France",
        )
    )
    rows = [r if len(r) == 8 else (*r, "United Kingdom") for r in rows]
    rows.sort(key=lambda r: (r[4], r[0]))
    return rows


def main() -> None:
    rng = random.Random(20261127)
    (HERE / "ratings_example.tsv").write_text("\n".join(ratings(rng)) + "\n", encoding="utf-8")
    with open(HERE / "invoice_lines_example.csv", "w", newline="", encoding="iso-8859-1") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(
            [
                "InvoiceNo",
                "StockCode",
                "Description",
                "Quantity",
                "InvoiceDate",
                "UnitPrice",
                "CustomerID",
                "Country",
            ]
        )
        writer.writerows(invoices(rng))


if __name__ == "__main__":
    main()
