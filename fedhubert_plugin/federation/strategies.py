"""The server's aggregation: Flower's strategies by name, optionally wrapped for differential privacy.

- Server optimizers: ``fedadam`` (default), ``fedyogi``, ``fedadagrad``, ``fedavg``.
- Robust to a few bad clients: ``fedmedian`` (coordinate-wise median), ``fedtrimmedavg``
  (drops the ``trimmed_beta`` largest and smallest values per coordinate), ``krum`` and
  ``multikrum`` (keep the updates closest to their neighbours, assuming ``malicious_nodes``).
- Differential privacy (``dp_clipping_norm`` > 0): Flower's
  ``DifferentialPrivacyClientSideFixedClipping``; each client clips its update with Flower's
  ``fixedclipping_mod`` and the server adds Gaussian noise of ``dp_noise_multiplier`` times
  the clipping norm over the number of sampled clients. With ``fedavg`` and noise, Flower's
  ``RdpAccountant`` reports the privacy spent (ε at ``dp_target_delta``) after each round.
"""
import json
import logging
from typing import Optional

from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedMedian,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    MultiKrum,
)

logger = logging.getLogger(__name__)

STRATEGIES = ("fedadam", "fedavg", "fedyogi", "fedadagrad", "fedmedian", "fedtrimmedavg", "krum", "multikrum")
# with DP, every client weighs the same (the Gaussian mechanism's sensitivity is per client):
# weights are the updates each client made, equal under --local-updates
DP_WEIGHT_KEY = "updates"


def sampled_clients(settings) -> int:
    """How many clients Flower samples per round when ``min_available_nodes`` are connected."""
    return max(int(settings.fraction_train * settings.min_available_nodes), settings.min_train_nodes)


def sampling(settings) -> dict:
    """Flower's sampling arguments: the share of clients that train, all of them validate."""
    return dict(
        fraction_train=settings.fraction_train,
        fraction_evaluate=1.0,
        min_train_nodes=settings.min_train_nodes,
        min_evaluate_nodes=settings.min_train_nodes,
        min_available_nodes=settings.min_available_nodes,
    )


def evaluation_strategy(settings) -> FedAvg:
    """Validation whatever the training strategy: every client, metrics averaged by valid utterances."""
    return FedAvg(**sampling(settings))


def base_strategy(settings):
    """The Flower strategy named by ``settings.strategy``, without privacy."""
    common = sampling(settings)
    if settings.dp_clipping_norm:
        common["weighted_by_key"] = DP_WEIGHT_KEY
    adaptive = dict(eta=settings.eta, eta_l=settings.eta_l or 1.0, tau=settings.tau)
    name = settings.strategy
    if name == "fedavg":
        return FedAvg(**common)
    if name == "fedadagrad":
        return FedAdagrad(**common, **adaptive)
    if name in ("fedadam", "fedyogi"):
        cls = FedAdam if name == "fedadam" else FedYogi
        return cls(**common, **adaptive, beta_1=settings.beta_1, beta_2=settings.beta_2)
    if name == "fedmedian":
        return FedMedian(**common)
    if name == "fedtrimmedavg":
        return FedTrimmedAvg(**common, beta=settings.trimmed_beta)
    if name == "krum":
        return Krum(**common, num_malicious_nodes=settings.malicious_nodes)
    if name == "multikrum":
        return MultiKrum(**common, num_malicious_nodes=settings.malicious_nodes,
                         num_nodes_to_select=max(1, sampled_clients(settings) - settings.malicious_nodes))
    raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")


def privacy_accountant(settings):
    """Flower's RDP accountant for ``settings``, or None where Flower cannot account (no noise, not FedAvg)."""
    from flwr.serverapp import RdpAccountant
    from flwr.supercore.privacy_accounting import NeighboringRelation, PrivacyConfig, SamplingMethod

    if not settings.dp_noise_multiplier:
        logger.warning("DP clipping without noise (--dp-noise-multiplier 0): updates are bounded, nothing is private")
        return None
    if settings.strategy != "fedavg":
        logger.warning("Flower accounts the privacy of FedAvg only: with --strategy %s no epsilon is reported", settings.strategy)
        return None
    config = PrivacyConfig(target_delta=settings.dp_target_delta, population_size=settings.min_available_nodes,
                           neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                           sampling_method=SamplingMethod.NO_AMPLIFICATION)
    return RdpAccountant(config)


def build_strategy(settings):
    """The strategy of ``settings`` (a ``PretrainSettings``), wrapped for DP when it asks for it."""
    strategy = base_strategy(settings)
    if settings.secure_aggregation:
        if settings.strategy != "fedavg" or settings.dp_clipping_norm or settings.max_update_norm or settings.transport_dtype != "float32":
            raise ValueError("--secure-aggregation averages masked updates that the server cannot see one by one: use it with "
                             "--strategy fedavg, without --dp-clipping-norm and --max-update-norm, and float32 transport")
        return strategy
    if not settings.dp_clipping_norm:
        return strategy
    if settings.local_epochs:
        raise ValueError("differential privacy needs --local-updates: with --local-epochs clients would weigh differently")
    if settings.transport_dtype != "float32":
        raise ValueError("differential privacy clips updates on the client: use --transport-dtype float32")
    return DifferentialPrivacyClientSideFixedClipping(
        strategy, settings.dp_noise_multiplier, settings.dp_clipping_norm, sampled_clients(settings),
        accountant=privacy_accountant(settings),
    )


def privacy_spent(strategy) -> Optional[dict]:
    """ε, δ and the number of private releases so far, where Flower accounts them."""
    spent = strategy.privacy_spent() if hasattr(strategy, "privacy_spent") else None
    return None if spent is None else {"epsilon": spent.epsilon, "delta": spent.delta, "releases": spent.num_releases}


def accountant_state(strategy) -> str:
    """The accountant's state as JSON ('' without one), for ``--resume``."""
    accountant = getattr(strategy, "accountant", None)
    return json.dumps(accountant.state_dict()) if accountant is not None else ""


def restore_accountant(strategy, state: str) -> None:
    """Put back the privacy spent before a restart."""
    if state and getattr(strategy, "accountant", None) is not None:
        strategy.accountant.load_state_dict(json.loads(state))
