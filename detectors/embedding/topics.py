"""Seeded synthetic prompt streams with known topic changes, for embedding drift.

Prompts are drawn from sentence templates with filled slots, per topic:

* ``billing``: charges, invoices, refunds, plans (the usual traffic);
* ``crypto``: moving coins between exchanges and wallets (a new topic);
* ``addons``: billing questions about a newly launched add-on product: same
  domain and tone as ``billing``, new vocabulary (a subtle change).

:func:`topic_stream` concatenates a stationary part and a changed part and
:func:`prompt_windows` cuts a stream into :class:`~llmpulse.detectors.base.Batch`
windows, so tests and benchmarks can measure detection delay in events.

>>> topic_prompts(2, {"billing": 1.0}, seed=3)
['Can you explain the currency conversion fee on my July invoice?', 'How do I update the billing address linked to my visa card?']
>>> stream = topic_stream(100, 50, before={"billing": 1.0}, after={"crypto": 1.0}, seed=0)
>>> len(stream), "wallet" in " ".join(stream[50:]), "wallet" in " ".join(stream[:50])
(100, True, False)
>>> [len(b) for b in prompt_windows(stream, 40)]
[40, 40, 20]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from llmpulse.detectors.base import Batch

__all__ = ["TOPICS", "prompt_windows", "topic_prompts", "topic_stream"]

_SLOTS: dict[str, tuple[str, ...]] = {
    "amount": ("$9.99", "$49", "€120", "$15.50", "£30", "$199", "$4.20", "€75"),
    "card": ("visa card", "mastercard", "amex", "debit card", "paypal account", "bank account"),
    "fee": ("late fee", "service charge", "tax line", "prorated charge", "currency conversion fee"),
    "month": ("January", "February", "March", "April", "May", "June", "July", "August"),
    "plan": ("Basic", "Pro", "Team", "Enterprise", "Starter"),
    "coin": ("bitcoin", "ethereum", "USDC", "solana", "dogecoin"),
    "wallet": (
        "Ledger hardware wallet",
        "MetaMask wallet",
        "Trezor",
        "cold wallet",
        "mobile wallet",
    ),
    "hours": ("2", "6", "12", "24", "48"),
    "addon": (
        "AI Assistant",
        "Priority Support",
        "Extra Storage",
        "Voice Minutes",
        "Analytics Plus",
    ),
}

TOPICS: dict[str, tuple[str, ...]] = {
    "billing": (
        "Why was I charged {amount} twice on my {card}?",
        "Can you explain the {fee} on my {month} invoice?",
        "I need a copy of my invoice for {month}.",
        "My {card} was declined when paying for the {plan} plan.",
        "How do I update the billing address linked to my {card}?",
        "When will the refund of {amount} appear on my {card} statement?",
        "Please cancel my {plan} subscription before the next billing date.",
        "Is there a discount if I switch the {plan} plan to annual billing?",
    ),
    "crypto": (
        "How do I move my {coin} from the exchange to my {wallet}?",
        "I lost the seed phrase for my {wallet}, can I still recover my {coin}?",
        "Why is my {coin} withdrawal still pending after {hours} hours?",
        "What network fee should I pay to send {coin} to a {wallet}?",
        "Can I connect my {wallet} to your app and pay in {coin}?",
        "Is it safe to keep {amount} worth of {coin} in a {wallet}?",
    ),
    "addons": (
        "Why was I charged {amount} for the {addon} add-on?",
        "How do I turn off auto-renewal of the {addon} add-on?",
        "Is the {addon} add-on included in my {plan} plan?",
        "Can I get a refund for the {addon} add-on I bought in {month}?",
        "The {addon} add-on shows up twice on my {month} invoice.",
    ),
}
"""Sentence templates per topic; ``{slot}`` names are filled from fixed word lists."""


def topic_prompts(n: int, mix: Mapping[str, float], *, seed: int = 0) -> list[str]:
    """``n`` prompts whose topics are drawn with the probabilities in ``mix``."""
    if n == 0:
        return []
    rng = np.random.default_rng(seed)
    names = sorted(mix)
    weights = np.asarray([mix[k] for k in names], dtype=np.float64)
    topics = rng.choice(len(names), size=n, p=weights / weights.sum())
    out: list[str] = []
    for t in topics:
        templates = TOPICS[names[t]]
        template = templates[rng.integers(len(templates))]
        fills = {k: v[rng.integers(len(v))] for k, v in _SLOTS.items() if "{" + k + "}" in template}
        out.append(template.format(**fills))
    return out


def topic_stream(
    n: int,
    change_at: int,
    *,
    before: Mapping[str, float],
    after: Mapping[str, float],
    seed: int = 0,
) -> list[str]:
    """``n`` prompts drawn from ``before`` up to position ``change_at``, then from ``after``."""
    if not 0 <= change_at <= n:
        raise ValueError(f"change_at must lie in [0, {n}], got {change_at}")
    head = topic_prompts(change_at, before, seed=seed)
    tail = topic_prompts(n - change_at, after, seed=seed + 1_000_003)
    return head + tail


def prompt_windows(
    prompts: Sequence[str], size: int, *, start: float = 1_700_000_000.0, rate: float = 10.0
) -> list[Batch]:
    """Consecutive windows of ``size`` prompts (the last may be shorter), ``rate`` events/s."""
    windows: list[Batch] = []
    for lo in range(0, len(prompts), size):
        chunk = prompts[lo : lo + size]
        ts = start + (lo + np.arange(len(chunk))) / rate
        events = [{"ts": float(t) * 1000.0, "prompt": p} for t, p in zip(ts, chunk, strict=True)]
        windows.append(
            Batch.from_events(events, start=start + lo / rate, end=start + (lo + len(chunk)) / rate)
        )
    return windows
