#!/usr/bin/env python3
"""Train the Mirador demo propensity model and export it as TorchScript.

Outputs (next to this file):
    propensity-v1.pt              TorchScript module, input float32 [N, 16],
                                  output float32 [N, 1] = P(conversion)
    propensity-v1.expected.json   fixed inputs and the scores the saved module
                                  gives them, plus held-out AUC and rule MAE

The training data is synthetic: features are sampled from plausible,
correlated distributions and labels are drawn from Bernoulli(sigmoid(logit))
where `rule_logit` below is the known ground-truth rule. See models/README.md
for the feature order and the rule.

Deterministic: fixed seeds, CPU only, single thread.

Usage: python3 models/train_propensity.py   (from any directory)
"""

import json
import math
import os
import time
import warnings

# torch warns at import time when numpy is absent; numpy is not needed here.
warnings.filterwarnings("ignore", message=".*NumPy.*")

import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL_PATH = os.path.join(HERE, "propensity-v1.pt")
EXPECTED_PATH = os.path.join(HERE, "propensity-v1.expected.json")

SEED = 1234
N_TRAIN = 400_000
N_TEST = 100_000
EPOCHS = 12
BATCH = 1024
LR = 1e-2

INPUT_WIDTH = 16
EVENT_TYPES = [
    "page_view",
    "ad_click",
    "add_to_cart",
    "purchase",
    "store_visit",
    "email_open",
    "email_click",
    "mention",
]
FEATURES = EVENT_TYPES + [
    "value",
    "recency_days",
    "frequency_30d",
    "monetary_90d",
    "engagement_score",
    "email_opt_in",
    "loyalty_tier",
    "churn_risk",
]
assert len(FEATURES) == INPUT_WIDTH

# Share of each event type in the generated event stream.
EVENT_MIX = [0.35, 0.10, 0.12, 0.06, 0.08, 0.12, 0.07, 0.10]


# --------------------------------------------------------------------------
# Ground-truth rule
# --------------------------------------------------------------------------

# Per-event-type contribution to the logit (same order as EVENT_TYPES).
RULE_EVENT_WEIGHT = [0.0, 0.7, 1.4, 2.0, 0.9, 0.2, 0.6, 0.1]


def rule_logit(x: Tensor) -> Tensor:
    """Known conversion logit for raw inputs x [N, 16] -> [N]."""
    x = x.double()
    ev = x[:, 0:8]
    value = x[:, 8]
    recency = x[:, 9]
    frequency = x[:, 10]
    monetary = x[:, 11]
    engagement = x[:, 12]
    opt_in = x[:, 13]
    tier = x[:, 14]
    churn = x[:, 15]
    email_event = ev[:, 5] + ev[:, 6]
    w = torch.tensor(RULE_EVENT_WEIGHT, dtype=torch.float64)
    return (
        -2.0
        + ev @ w
        + 0.15 * torch.log1p(value)
        - 3.0 * recency / 365.0
        + 0.8 * frequency / 30.0
        + 0.12 * torch.log1p(monetary)
        + 1.5 * engagement
        + 0.3 * opt_in
        + 0.25 * tier
        - 2.0 * churn
        # interaction: email events only lift opted-in customers
        + 0.8 * opt_in * email_event
    )


def rule_prob(x: Tensor) -> Tensor:
    return torch.sigmoid(rule_logit(x))


# --------------------------------------------------------------------------
# Synthetic data
# --------------------------------------------------------------------------


def sample_features(n: int, g: torch.Generator) -> Tensor:
    """Raw model inputs [n, 16], float32.

    Customer features follow the same correlated scheme as
    models/make_features.py (a latent activity level drives all of them);
    20% of rows instead draw every customer feature uniformly over its full
    range so the model also sees the extremes.
    """

    def u(*shape):
        return torch.rand(*shape, generator=g, dtype=torch.float64)

    def normal(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    # Event type.
    mix = torch.tensor(EVENT_MIX, dtype=torch.float64)
    etype = torch.multinomial(mix, n, replacement=True, generator=g)
    onehot = torch.nn.functional.one_hot(etype, 8).double()

    # Correlated customer features.
    # Beta sampling has no generator argument; it uses the global RNG, which
    # main() seeds with torch.manual_seed.
    beta = torch.distributions.Beta(
        torch.tensor(1.6, dtype=torch.float64), torch.tensor(2.8, dtype=torch.float64)
    )
    activity = beta.sample((n,)).clamp(0.0, 1.0)
    engagement = (0.75 * activity + 0.25 * u(n) + 0.05 * normal(n)).clamp(0.0, 1.0)
    lam = 0.3 + 22.0 * activity.pow(1.5)
    frequency = torch.poisson(lam, generator=g).clamp(0.0, 60.0)
    mean_recency = 4.0 + 160.0 * (1.0 - activity).pow(2)
    recency = (-mean_recency * torch.log1p(-u(n))).floor().clamp(0.0, 365.0)
    p_spend = (0.3 + 0.8 * activity - 0.35 * (recency > 90).double()).clamp(0.02, 0.98)
    spends = u(n) < p_spend
    monetary = torch.exp(3.8 + 2.6 * activity + 0.7 * normal(n)).clamp(1.0, 5000.0)
    monetary = torch.where(spends, monetary, torch.zeros_like(monetary))
    opt_in = (u(n) < 0.35 + 0.4 * engagement).double()
    tier_score = 0.6 * activity + 0.3 * torch.log1p(monetary) / 8.5 + 0.08 * normal(n)
    tier = (
        (tier_score >= 0.26).double()
        + (tier_score >= 0.46).double()
        + (tier_score >= 0.63).double()
    )
    churn = torch.sigmoid(
        -0.8
        + 4.0 * recency / 365.0
        - 0.08 * frequency
        - 1.5 * engagement
        - 0.3 * tier
        + 0.4 * normal(n)
    )

    # Uniform rows over the full ranges.
    uni = u(n) < 0.2
    recency = torch.where(uni, (u(n) * 366.0).floor().clamp(max=365.0), recency)
    frequency = torch.where(uni, (u(n) * 61.0).floor().clamp(max=60.0), frequency)
    monetary = torch.where(uni, torch.expm1(u(n) * math.log1p(5000.0)), monetary)
    engagement = torch.where(uni, u(n), engagement)
    opt_in = torch.where(uni, (u(n) < 0.5).double(), opt_in)
    tier = torch.where(uni, (u(n) * 4.0).floor().clamp(max=3.0), tier)
    churn = torch.where(uni, u(n), churn)

    # Event value: carts and purchases carry a value, store visits sometimes.
    raw_value = torch.exp(3.5 + 1.1 * normal(n)).clamp(0.0, 2000.0)
    has_value = (etype == 2) | (etype == 3) | ((etype == 4) & (u(n) < 0.5))
    value = torch.where(has_value, raw_value, torch.zeros_like(raw_value))

    cols = [value, recency, frequency, monetary, engagement, opt_in, tier, churn]
    x = torch.cat([onehot, torch.stack(cols, dim=1)], dim=1)
    return x.float()


# --------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------


class Propensity(nn.Module):
    """Raw features [N, 16] -> P(conversion) [N, 1]."""

    def __init__(self, hidden: int = 32):
        super().__init__()
        self.fc1 = nn.Linear(INPUT_WIDTH, hidden)
        self.fc2 = nn.Linear(hidden, 1)

    def normalise(self, x: Tensor) -> Tensor:
        if x.dim() != 2 or x.size(1) != 16:
            raise ValueError("propensity: expected input of shape [N, 16]")
        x = x.to(torch.float32)
        event = x[:, 0:8]
        value = torch.log1p(torch.clamp(x[:, 8:9], min=0.0)) / 8.0
        recency = torch.clamp(x[:, 9:10], 0.0, 365.0) / 365.0
        frequency = torch.clamp(x[:, 10:11], min=0.0) / 30.0
        monetary = torch.log1p(torch.clamp(x[:, 11:12], min=0.0)) / 9.0
        engagement_opt_in = x[:, 12:14]
        tier = x[:, 14:15] / 3.0
        churn = x[:, 15:16]
        return torch.cat(
            [event, value, recency, frequency, monetary, engagement_opt_in, tier, churn],
            dim=1,
        )

    def logit(self, x: Tensor) -> Tensor:
        return self.fc2(torch.relu(self.fc1(self.normalise(x))))

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.logit(x))


# --------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------


def auc(scores: Tensor, labels: Tensor) -> float:
    """ROC AUC via the Mann-Whitney U statistic, ties get average ranks."""
    scores = scores.double().flatten()
    labels = labels.flatten() > 0.5
    uniq, inverse, counts = torch.unique(scores, return_inverse=True, return_counts=True)
    upper = torch.cumsum(counts, 0).double()  # highest 1-based rank per value
    avg_rank = upper - (counts.double() - 1.0) / 2.0
    ranks = avg_rank[inverse]
    n_pos = int(labels.sum())
    n_neg = labels.numel() - n_pos
    u_stat = ranks[labels].sum().item() - n_pos * (n_pos + 1) / 2.0
    return u_stat / (n_pos * n_neg)


# --------------------------------------------------------------------------
# Fixed cases for expected.json (one per event type, round values)
# --------------------------------------------------------------------------


def case(event, value, recency, frequency, monetary, engagement, opt_in, tier, churn):
    onehot = [0.0] * 8
    onehot[EVENT_TYPES.index(event)] = 1.0
    return onehot + [
        float(value),
        float(recency),
        float(frequency),
        float(monetary),
        float(engagement),
        float(opt_in),
        float(tier),
        float(churn),
    ]


CASES = [
    case("page_view", 0, 30, 4, 150, 0.3, 0, 0, 0.4),
    case("ad_click", 0, 60, 2, 0, 0.2, 1, 0, 0.5),
    case("add_to_cart", 120, 10, 12, 800, 0.7, 1, 2, 0.1),
    case("purchase", 250, 5, 20, 2000, 0.9, 1, 3, 0.05),
    case("store_visit", 40, 90, 3, 300, 0.4, 0, 1, 0.3),
    case("email_open", 0, 200, 1, 50, 0.1, 1, 0, 0.8),
    case("email_click", 0, 14, 8, 400, 0.6, 1, 1, 0.2),
    case("mention", 0, 365, 0, 0, 0.0, 0, 0, 1.0),
]


# --------------------------------------------------------------------------


def main():
    t0 = time.time()
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    g = torch.Generator().manual_seed(SEED)
    x_train = sample_features(N_TRAIN, g)
    y_train = torch.bernoulli(rule_prob(x_train), generator=g).float().unsqueeze(1)
    x_test = sample_features(N_TEST, g)
    p_test_rule = rule_prob(x_test)
    y_test = torch.bernoulli(p_test_rule, generator=g).float()
    print(
        f"data: train {N_TRAIN} (positive rate {y_train.mean().item():.3f}), "
        f"test {N_TEST} (positive rate {y_test.mean().item():.3f})"
    )

    model = Propensity()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    steps_per_epoch = (N_TRAIN + BATCH - 1) // BATCH
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=LR, total_steps=EPOCHS * steps_per_epoch, pct_start=0.1
    )
    loss_fn = nn.BCEWithLogitsLoss()
    for epoch in range(EPOCHS):
        perm = torch.randperm(N_TRAIN, generator=g)
        total = 0.0
        for i in range(steps_per_epoch):
            idx = perm[i * BATCH : (i + 1) * BATCH]
            loss = loss_fn(model.logit(x_train[idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * idx.numel()
        print(f"epoch {epoch + 1:2d}/{EPOCHS}  train loss {total / N_TRAIN:.4f}")

    model.eval()
    with torch.no_grad():
        p_test = model(x_test).squeeze(1).double()
    test_auc = auc(p_test, y_test)
    rule_auc = auc(p_test_rule, y_test)
    rule_mae = (p_test - p_test_rule).abs().mean().item()
    print(f"held-out AUC {test_auc:.4f} (true rule AUC {rule_auc:.4f})")
    print(f"mean |p_model - p_rule| {rule_mae:.4f}")

    scripted = torch.jit.script(model)
    scripted.save(MODEL_PATH)

    # Score the fixed cases with the saved-and-reloaded module.
    loaded = torch.jit.load(MODEL_PATH, map_location="cpu")
    loaded.eval()
    inputs = torch.tensor(CASES, dtype=torch.float32)
    with torch.no_grad():
        scores = loaded(inputs)
        assert scores.shape == (len(CASES), 1) and scores.dtype == torch.float32
        # Single-row calls must agree with the batch.
        for i in range(len(CASES)):
            one = loaded(inputs[i : i + 1])
            assert one.shape == (1, 1)
            assert abs(one.item() - scores[i, 0].item()) < 1e-6
        assert loaded(torch.zeros(0, INPUT_WIDTH)).shape == (0, 1)

    expected = {
        "model": "propensity",
        "version": "1",
        "input_width": INPUT_WIDTH,
        "auc": round(test_auc, 4),
        "rule_mae": round(rule_mae, 4),
        "cases": [
            {"input": row, "score": scores[i, 0].item()} for i, row in enumerate(CASES)
        ],
    }
    with open(EXPECTED_PATH, "w", encoding="ascii") as f:
        json.dump(expected, f, indent=2)
        f.write("\n")

    rule_p = rule_prob(inputs)
    for i, row in enumerate(CASES):
        ev = EVENT_TYPES[row[:8].index(1.0)]
        print(f"  {ev:12s} model {scores[i, 0].item():.4f}  rule {rule_p[i].item():.4f}")
    print(f"wrote {MODEL_PATH} ({os.path.getsize(MODEL_PATH)} bytes)")
    print(f"wrote {EXPECTED_PATH}")
    print(f"done in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
