"""A federated run's log places each validation on the tiny recipe's reference curves (docs/training-curves.md)."""

import logging

from fedhubert_plugin.federation.server.runlog import RunLog, read_metrics
from fedhubert_plugin.federation.settings import FederationSettings
from fedhubert_plugin.reference_curve import reference_band, reference_curves

REFERENCE = {  # one run kind's curve
    "source": "a test",
    "updates": [40, 120],
    "loss": {"min": [7.0, 5.0], "max": [8.0, 6.0], "mean": [7.5, 5.5]},
    "acc_masked": {"min": [0.02, 0.10], "max": [0.04, 0.20], "mean": [0.03, 0.15]},
    "acc_unmasked": {"min": [0.02, 0.10], "max": [0.04, 0.20], "mean": [0.03, 0.15]},
}


def round_line(rnd: int, updates_per_client: int) -> dict:
    """A metrics.jsonl line of two clients that validated the previous round's model."""
    return {
        "round": rnd,
        "train": {"loss": 6.0, "lr": 1e-3},
        "participants": ["client_000", "client_001"],
        "round_seconds": 1.0,
        "privacy": {},
        "bytes_sent": 0,
        "bytes_received": 0,
        "clients": {name: {"train_updates": updates_per_client} for name in ("client_000", "client_001")},
        "validations": [{"model_round": rnd - 1, "how": "with training", "metrics": {"loss": 6.5, "acc_masked": 0.1}}],
    }


def test_validations_carry_the_updates_behind_their_model_and_the_reference_band(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    server = tmp_path / "server"
    log = RunLog(server, REFERENCE)
    for rnd in (1, 2, 3):
        log.append(round_line(rnd, 20))  # 40 updates in all a round
    log.close()
    resumed = RunLog(server, REFERENCE)  # a resumed run goes on counting from metrics.jsonl
    resumed.append(round_line(4, 20))
    resumed.close()
    validations = [line["validations"][0] for line in read_metrics(server)]
    assert [v["updates"] for v in validations] == [0, 40, 80, 120]
    assert "reference" not in validations[0]  # before the curves start
    assert validations[2]["reference"] == {"loss": [6.0, 7.0], "acc_masked": [0.06, 0.12], "acc_unmasked": [0.06, 0.12]}
    assert "round 2's model at 80 updates in all: valid loss 6.500 (reference 6.000–7.000), masked acc 0.100 " in (
        caplog.text
    )


def test_the_stored_reference_curves_rise_and_cover_every_run_kind():
    curves = reference_curves()
    # every strategy a user can pick by default or in the benchmarks has its curve
    assert curves["recipe"] == "tiny" and set(curves["runs"]) == {"centralized", "fedavg", "fedadam"}
    assert FederationSettings().strategy in curves["runs"]
    for curve in curves["runs"].values():
        assert curve["updates"] == sorted(curve["updates"]) and len(curve["updates"]) == 20
        for measure in ("loss", "acc_masked", "acc_unmasked"):
            assert all(lo <= hi for lo, hi in zip(curve[measure]["min"], curve[measure]["max"]))
        masked = curve["acc_masked"]["mean"]
        assert masked[-1] > 2 * masked[0] and curve["loss"]["mean"][-1] < curve["loss"]["mean"][0]
    assert reference_band(curves["runs"]["fedavg"], 10**9) is None  # beyond the curves: nothing to say
