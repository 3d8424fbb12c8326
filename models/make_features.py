#!/usr/bin/env python3
"""Generate the bundled customer feature table, examples/features.csv.

10000 customers, ids c000000 .. c009999. Columns (the customer-side model
features, see models/README.md):

    customer_id       'c' + 6 digits
    recency_days      days since last purchase, integer 0..365
    frequency_30d     sessions in the last 30 days, integer 0..60
    monetary_90d      spend in the last 90 days, currency units, 0..5000
    engagement_score  0..1
    email_opt_in      0 or 1
    loyalty_tier      0, 1, 2 or 3
    churn_risk        0..1

Values are correlated through a per-customer latent "activity" level: active
customers visit more often, bought more recently, spend more, sit in higher
loyalty tiers and have lower churn risk. Pure standard library, fixed seed,
so the output is byte-for-byte reproducible.

Usage: python3 models/make_features.py   (from any directory)
"""

import math
import os
import random

SEED = 20240607
N_CUSTOMERS = 10_000

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_PATH = os.path.join(HERE, "..", "examples", "features.csv")

HEADER = [
    "customer_id",
    "recency_days",
    "frequency_30d",
    "monetary_90d",
    "engagement_score",
    "email_opt_in",
    "loyalty_tier",
    "churn_risk",
]


def clamp(x, lo, hi):
    return lo if x < lo else hi if x > hi else x


def sigmoid(z):
    return 1.0 / (1.0 + math.exp(-z))


def poisson(rng, lam):
    """Poisson sample (Knuth for small lambda, rounded normal for large)."""
    if lam <= 0.0:
        return 0
    if lam > 30.0:
        return max(0, int(round(rng.gauss(lam, math.sqrt(lam)))))
    limit = math.exp(-lam)
    k = 0
    p = rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def fmt(x):
    """At most 3 decimals, no trailing zeros, no '-0'."""
    s = f"{x:.3f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def make_row(rng, i):
    # Latent activity level in (0, 1); skewed towards low activity.
    activity = rng.betavariate(1.6, 2.8)

    engagement = clamp(0.75 * activity + 0.25 * rng.random() + rng.gauss(0.0, 0.05), 0.0, 1.0)

    frequency = min(60, poisson(rng, 0.3 + 22.0 * activity ** 1.5))

    # Active customers bought recently; inactive ones up to a year ago.
    mean_recency = 4.0 + 160.0 * (1.0 - activity) ** 2
    recency = int(clamp(rng.expovariate(1.0 / mean_recency), 0.0, 365.0))

    # Spend in the last 90 days: zero for many lapsed customers.
    p_spend = clamp(0.3 + 0.8 * activity - (0.35 if recency > 90 else 0.0), 0.02, 0.98)
    if rng.random() < p_spend:
        monetary = math.exp(rng.gauss(3.8 + 2.6 * activity, 0.7))
        monetary = clamp(round(monetary, 2), 1.0, 5000.0)
    else:
        monetary = 0.0

    email_opt_in = 1 if rng.random() < 0.35 + 0.4 * engagement else 0

    tier_score = 0.6 * activity + 0.3 * math.log1p(monetary) / 8.5 + rng.gauss(0.0, 0.08)
    if tier_score < 0.26:
        tier = 0
    elif tier_score < 0.46:
        tier = 1
    elif tier_score < 0.63:
        tier = 2
    else:
        tier = 3

    churn_logit = (
        -0.8
        + 4.0 * recency / 365.0
        - 0.08 * frequency
        - 1.5 * engagement
        - 0.3 * tier
        + rng.gauss(0.0, 0.4)
    )
    churn = clamp(sigmoid(churn_logit), 0.0, 1.0)

    return [
        f"c{i:06d}",
        str(recency),
        str(frequency),
        fmt(monetary),
        fmt(engagement),
        str(email_opt_in),
        str(tier),
        fmt(churn),
    ]


def main():
    rng = random.Random(SEED)
    out_path = os.path.normpath(OUT_PATH)
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    with open(out_path, "w", newline="\n", encoding="ascii") as f:
        f.write(",".join(HEADER) + "\n")
        for i in range(N_CUSTOMERS):
            f.write(",".join(make_row(rng, i)) + "\n")
    print(f"wrote {out_path} ({N_CUSTOMERS} rows, {os.path.getsize(out_path)} bytes)")


if __name__ == "__main__":
    main()
