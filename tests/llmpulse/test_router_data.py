"""The simulator's router tickets handed to retrain/: the shipped reference data is current,
and held-out tickets are new to every set they are kept from."""

from __future__ import annotations

from llmpulse.retrain.reference import LAUNCH_INTENTS, REFERENCE_DATA, reference_dataset
from llmpulse.router_data import drifted_tickets, heldout_tickets, reference_lines


def test_shipped_reference_tickets_match_the_simulator() -> None:
    """Fails when the simulator changes and the file was not regenerated
    (python -m llmpulse.router_data --write-reference)."""
    assert REFERENCE_DATA.read_text(encoding="utf-8").splitlines() == reference_lines()
    data = reference_dataset()
    assert set(data.labels) == set(LAUNCH_INTENTS)
    assert len(data) == len(reference_lines())


def test_heldout_tickets_avoid_the_excluded_texts() -> None:
    training = drifted_tickets(7, 300, share=0.75)
    exclude = {t[0] for t in training} | set(reference_dataset().texts)
    held = heldout_tickets(1007, 200, exclude=exclude, share=0.75)
    texts = [t[0] for t in held]
    assert len(held) == 200 and len(set(texts)) == 200
    assert not set(texts) & exclude
    # the drifted topics are there: the reference version never saw these intents
    assert {"integration", "privacy"} <= {t[1] for t in held}
