"""The server's aggregation: Flower's strategies by name, wrapped for differential privacy and screening.

- Server optimizers: ``fedavg`` (default), ``fedadam``, ``fedyogi``, ``fedadagrad``: Flower's
  classes, holding memory in place (``optimizers``).
- Robust to a few bad clients: ``fedmedian`` (coordinate-wise median), ``fedtrimmedavg``
  (drops the ``trimmed_beta`` largest and smallest values per coordinate), ``krum`` and
  ``multikrum`` (keep the updates closest to their neighbours, assuming ``malicious_nodes``).
- Differential privacy (``dp_clipping_norm`` > 0): Flower's
  ``DifferentialPrivacyClientSideFixedClipping``; each client clips its update with Flower's
  ``fixedclipping_mod`` and the server adds Gaussian noise of ``dp_noise_multiplier`` times
  the clipping norm over the number of sampled clients. With ``fedavg`` and noise, Flower's
  ``RdpAccountant`` reports the privacy spent (ε at ``dp_target_delta``) after each round.
- Outermost, ``ScreenedStrategy`` screens every reply first (not under SecAgg+, where the
  server never sees a single update), and for the server optimizers without DP folds each into a
  running mean as it arrives (``streaming``).
"""

import json
import logging
from typing import Optional

from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    FedAvg,
    FedMedian,
    FedTrimmedAvg,
    Krum,
    MultiKrum,
    Strategy,
)

from fedhubert_plugin.federation.server.optimizers import (
    InPlaceFedAdagrad,
    InPlaceFedAdam,
    InPlaceFedYogi,
    StreamingFedAvg,
)
from fedhubert_plugin.federation.server.screening import ScreenedStrategy, layers
from fedhubert_plugin.federation.server.streaming import streams
from fedhubert_plugin.federation.settings import FederationSettings
from fedhubert_plugin.federation.wire import UPDATES

logger = logging.getLogger(__name__)

# with DP, every client weighs the same (the Gaussian mechanism's sensitivity is per client):
# weights are the updates each client made, equal under --local-updates
DP_WEIGHT_KEY = UPDATES


def sampled_clients(settings: FederationSettings) -> int:
    """How many clients Flower samples per round when ``min_available_nodes`` are connected."""
    return max(int(settings.fraction_train * settings.min_available_nodes), settings.min_train_nodes)


def sampling(settings: FederationSettings) -> dict:
    """Flower's sampling arguments: the share of clients that train, all of them validate."""
    return dict(
        fraction_train=settings.fraction_train,
        fraction_evaluate=1.0,
        min_train_nodes=settings.min_train_nodes,
        min_evaluate_nodes=settings.min_train_nodes,
        min_available_nodes=settings.min_available_nodes,
    )


def evaluation_strategy(settings: FederationSettings) -> FedAvg:
    """Validation whatever the training strategy: every client, metrics averaged by valid utterances."""
    return FedAvg(**sampling(settings))


def base_strategy(settings: FederationSettings) -> Strategy:
    """The Flower strategy named by ``settings.strategy``, without privacy."""
    common = sampling(settings)
    if settings.dp_clipping_norm:
        common["weighted_by_key"] = DP_WEIGHT_KEY
    adaptive = dict(eta=settings.eta, eta_l=settings.eta_l or 1.0, tau=settings.tau)
    name = settings.strategy
    if name == "fedavg":
        return StreamingFedAvg(**common)
    if name == "fedadagrad":
        return InPlaceFedAdagrad(**common, **adaptive)
    if name in ("fedadam", "fedyogi"):
        cls = InPlaceFedAdam if name == "fedadam" else InPlaceFedYogi
        return cls(**common, **adaptive, beta_1=settings.beta_1, beta_2=settings.beta_2)
    if name == "fedmedian":
        return FedMedian(**common)
    if name == "fedtrimmedavg":
        return FedTrimmedAvg(**common, beta=settings.trimmed_beta)
    if name == "krum":
        return Krum(**common, num_malicious_nodes=settings.malicious_nodes)
    if name == "multikrum":
        return MultiKrum(
            **common,
            num_malicious_nodes=settings.malicious_nodes,
            num_nodes_to_select=max(1, sampled_clients(settings) - settings.malicious_nodes),
        )
    raise ValueError(f"unknown strategy {name!r}")  # FederationSettings.validate names the choices


def privacy_accountant(settings: FederationSettings):
    """Flower's RDP accountant for ``settings``, or None where Flower cannot account (no noise, not FedAvg)."""
    from flwr.serverapp import RdpAccountant
    from flwr.supercore.privacy_accounting import NeighboringRelation, PrivacyConfig, SamplingMethod

    if not settings.dp_noise_multiplier:
        logger.warning("DP clipping without noise (--dp-noise-multiplier 0): updates are bounded, nothing is private")
        return None
    if settings.strategy != "fedavg":
        logger.warning(
            "Flower accounts the privacy of FedAvg only: with --strategy %s no epsilon is reported", settings.strategy
        )
        return None
    config = PrivacyConfig(
        target_delta=settings.dp_target_delta,
        population_size=settings.min_available_nodes,
        neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
        sampling_method=SamplingMethod.NO_AMPLIFICATION,
    )
    return RdpAccountant(config)


def build_strategy(settings: FederationSettings) -> Strategy:
    """The strategy of ``settings`` (validated): Flower's, wrapped for DP when asked, then for screening."""
    strategy = base_strategy(settings)
    if settings.secure_aggregation:
        return strategy
    if settings.dp_clipping_norm:
        strategy = DifferentialPrivacyClientSideFixedClipping(
            strategy,
            settings.dp_noise_multiplier,
            settings.dp_clipping_norm,
            sampled_clients(settings),
            accountant=privacy_accountant(settings),
        )
    return ScreenedStrategy(
        strategy,
        settings.max_update_norm,
        settings.min_train_nodes,
        settings.round_timeout,
        settings.tolerate_broken_data,
        streams(settings),
    )


def accountant_of(strategy: Strategy):
    """The DP wrapper's privacy accountant, or None."""
    return next(
        (layer.accountant for layer in layers(strategy) if getattr(layer, "accountant", None) is not None), None
    )


def privacy_spent(strategy: Strategy) -> Optional[dict]:
    """ε, δ and the number of private releases so far, where Flower accounts them."""
    dp = next((layer for layer in layers(strategy) if hasattr(layer, "privacy_spent")), None)
    spent = dp.privacy_spent() if dp is not None else None
    return None if spent is None else {"epsilon": spent.epsilon, "delta": spent.delta, "releases": spent.num_releases}


def accountant_state(strategy: Strategy) -> str:
    """The accountant's state as JSON ('' without one), for ``--resume``."""
    accountant = accountant_of(strategy)
    return json.dumps(accountant.state_dict()) if accountant is not None else ""


def restore_accountant(strategy: Strategy, state: str) -> None:
    """Put back the privacy spent before a restart."""
    accountant = accountant_of(strategy)
    if state and accountant is not None:
        accountant.load_state_dict(json.loads(state))
