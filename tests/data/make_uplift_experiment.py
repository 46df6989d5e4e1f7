"""Writes uplift_experiment.csv: a randomized email experiment exported from another tool.

4,000 customers, half sent an offer (`arm`: offer / none) at random. The
effect of the offer depends on two columns: +25 points of purchase
probability for young frequent visitors (age_band 18-34 and visits_90d >= 10),
-15 points for age_band 55+ (put off), +2 points for everyone else. `region`
and `tenure_months` carry no effect. Run from this folder to regenerate:
    python make_uplift_experiment.py
"""

import numpy as np
import pandas as pd

N = 4000


def effect(age_band: pd.Series, visits: pd.Series) -> np.ndarray:
    young_frequent = (age_band == "18-34") & (visits >= 10)
    return np.where(young_frequent, 0.25, np.where(age_band == "55+", -0.15, 0.02))


def main() -> None:
    rng = np.random.default_rng(20261128)
    frame = pd.DataFrame(
        {
            "customer_id": np.arange(100_001, 100_001 + N),
            "age_band": rng.choice(["18-34", "35-54", "55+"], N, p=[0.4, 0.35, 0.25]),
            "visits_90d": rng.poisson(8, N),
            "region": rng.choice(["north", "south", "east", "west"], N),
            "tenure_months": rng.integers(1, 60, N),
            "arm": rng.choice(["offer", "none"], N),
        }
    )
    base = np.clip(0.15 + 0.01 * frame["visits_90d"], 0, 0.6)
    offered = frame["arm"] == "offer"
    p = np.clip(base + offered * effect(frame["age_band"], frame["visits_90d"]), 0, 1)
    frame["purchased"] = np.where(rng.random(N) < p, "yes", "no")
    frame.to_csv("uplift_experiment.csv", index=False)


if __name__ == "__main__":
    main()
