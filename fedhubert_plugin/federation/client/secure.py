"""Secure aggregation with Flower's SecAgg+ (``--secure-aggregation``): the client's half.

Flower's ``secaggplus_mod`` wraps the ClientApp on SecAgg+ rounds, and ``secure_train`` answers
the legacy ``fitins`` message with the client's update (local weights minus the global ones), which
the mod masks. With ``server/secure.py`` (the server's half, and what SecAgg+ costs), the only
modules that touch Flower's legacy and compat internals.
"""

from flwr.app import Context, Message
from flwr.client.mod import secaggplus_mod
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common.recorddict_compat import fitres_to_recorddict

from fedhubert_plugin.federation.client.trainer import node_trainer
from fedhubert_plugin.federation.client.work import FitTask
from fedhubert_plugin.federation.nodes import client_folder
from fedhubert_plugin.federation.wire import (
    FITINS_CONFIG,
    FITINS_PARAMETERS,
    NUM_EXAMPLES,
    VALID_PREFIX,
    ClientConfig,
    from_config_record,
)


def secure_aggregation_mod(msg: Message, context: Context, call_next) -> Message:
    """Flower's ``secaggplus_mod`` on the messages of a SecAgg+ round; others pass through."""
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


def is_secure_round(msg: Message) -> bool:
    """Whether ``msg`` is the training message of a SecAgg+ round (legacy ``fitins`` records)."""
    return FITINS_PARAMETERS in msg.content.array_records


def secure_train(msg: Message, context: Context) -> Message:
    """Client: train like any round, reply with the update (not the weights) for SecAgg+ to mask."""
    record = msg.content.config_records[FITINS_CONFIG]
    config = from_config_record(ClientConfig, record)
    folder = client_folder(context, config.data_root)
    names = [str(name) for name in record["param-names"]]
    arrays = dict(zip(names, (a.numpy() for a in msg.content.array_records[FITINS_PARAMETERS].values())))
    result = node_trainer(context, config).fit(FitTask.of(config, folder, arrays))
    update = [result.arrays[name] - arrays[name] for name in names]
    reply = FitRes(
        Status(Code.OK, "ok"),
        ndarrays_to_parameters(update),
        num_examples=1,  # uniform average
        metrics={
            **result.metrics,
            **{f"{VALID_PREFIX}{k}": v for k, v in result.validation.items()},
            NUM_EXAMPLES: result.num_examples,
            "client": folder.name,
        },
    )
    return Message(fitres_to_recorddict(reply, keep_input=False), reply_to=msg)
