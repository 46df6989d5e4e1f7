"""Writes email_experiment.csv: a randomized e-mail send whose outcome is spend.

The shape of a public retail e-mail test (recency, history, mens, womens,
newbie, zip_code, channel; `segment` Email / No E-Mail), drawn here so that each
row's expected outcomes under both arms are known: the tests compute the true
gain of a targeting from `visit_effect` and `spend_effect` (not written to the
csv). conf/uplift_revenue_example.yaml trains on the csv. Run from this folder to
regenerate:
    python make_email_experiment.py
"""

import numpy as np
import pandas as pd

N = 6000
SEED = 20261207


def email_experiment(n: int, seed: int, treated_share: float = 0.5) -> pd.DataFrame:
    """`n` customers, `treated_share` of them sent the e-mail at random.

    Visits: base rate from recency, history and channel; the e-mail adds up to 12 points
    for recent women's-wear buyers with a large history, 4 for other recent buyers, none
    for the lapsed and takes 3 from newcomers. Spend: a visitor spends a gamma amount
    around 0.2 x history; the e-mail also lifts the amount of recent women's-wear buyers
    by a third. `visit_effect` and `spend_effect` are the expected changes per row.
    """
    rng = np.random.default_rng(seed)
    recency = rng.integers(1, 13, n)
    history = np.round(rng.lognormal(5.0, 0.9, n), 2)
    womens = rng.integers(0, 2, n)
    mens = np.where(womens == 1, rng.integers(0, 2, n), 1)
    newbie = rng.integers(0, 2, n)
    zip_code = rng.choice(["Urban", "Suburban", "Rural"], n, p=[0.4, 0.45, 0.15])
    channel = rng.choice(["Phone", "Web", "Multichannel"], n, p=[0.44, 0.44, 0.12])
    treated = (rng.random(n) < treated_share).astype(int)
    base = 1 / (1 + np.exp(-(-1.6 - 0.08 * recency + 0.25 * np.log(history / 150)
                             + 0.3 * (channel == "Multichannel"))))  # fmt: skip
    recent = recency <= 4
    lift = np.where(recent & (womens == 1), 0.04 + 0.08 * np.clip(history / 600, 0, 1),
                    np.where(recent, 0.04, 0.0)) - 0.03 * newbie  # fmt: skip
    p0, p1 = base, np.clip(base + lift, 0.001, 0.999)
    mean_amount = 0.2 * history + 20
    boost = np.where(recent & (womens == 1), 4 / 3, 1.0)
    visit = (rng.random(n) < np.where(treated == 1, p1, p0)).astype(int)
    amount = rng.gamma(4.0, mean_amount / 4.0) * np.where(treated == 1, boost, 1.0)
    return pd.DataFrame(
        {
            "customer": np.arange(n) + 10_000_000 * seed,
            "recency": recency,
            "history": history,
            "mens": mens,
            "womens": womens,
            "newbie": newbie,
            "zip_code": zip_code,
            "channel": channel,
            "segment": np.where(treated == 1, "Email", "No E-Mail"),
            "visit": visit,
            "spend": np.round(visit * amount, 2),
            "visit_effect": p1 - p0,
            "spend_effect": p1 * mean_amount * boost - p0 * mean_amount,
        }
    )


def main() -> None:
    frame = email_experiment(N, SEED)
    frame.drop(columns=["visit_effect", "spend_effect"]).to_csv("email_experiment.csv",
                                                                index=False)  # fmt: skip


if __name__ == "__main__":
    main()
