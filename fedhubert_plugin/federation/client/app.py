"""The Flower ClientApp: local fairseq training and validation of the global weights on a client's shard.

``train`` loads the global weights into the node's fairseq trainer (``trainer.trainer_for``: in this
process for a simulation's Ray actor, in the node's kept trainer service for a SuperNode),
validates them on the client's valid split when the message asks for it, trains on the client's
own shard and replies with the new weights, the round's metrics and that validation;
``evaluate`` (a separate message, on the rounds that ask for one) validates the global weights. A client whose files
are broken (the task's ``ShardError``: a missing or mismatched manifest, label file or
dictionary) says so in its reply, named, so that the server can stop the run or leave the
client out (``tolerate-broken-data``); any other failure is Flower's error reply. Two mods wrap them:
Flower's DP clipping on rounds that ask for it, and Flower's SecAgg+ on secure rounds.
"""

import time

import psutil
from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from fedhubert_plugin import console
from fedhubert_plugin.data.manifest import ShardError
from fedhubert_plugin.federation.client.secure import is_secure_round, secure_aggregation_mod, secure_train
from fedhubert_plugin.federation.client.trainer import node_trainer
from fedhubert_plugin.federation.client.work import EvaluateTask, FitTask
from fedhubert_plugin.federation.nodes import client_folder
from fedhubert_plugin.federation.wire import (
    ARRAYS,
    CONFIG,
    NUM_EXAMPLES,
    ClientConfig,
    arrays_of,
    broken_data_reply,
    client_reply,
    from_config_record,
    record_of,
)


def dp_clipping_mod(msg: Message, context: Context, call_next) -> Message:
    """Flower's ``fixedclipping_mod`` on train messages whose config carries a DP clipping norm."""
    config = msg.content.config_records.get(CONFIG)
    if config is not None and KEY_CLIPPING_NORM in config:
        return fixedclipping_mod(msg, context, call_next)
    return call_next(msg, context)


client_app = ClientApp(mods=[dp_clipping_mod, secure_aggregation_mod])
console.apply()  # this Ray actor or ClientApp process follows the console choice of the command that started it


_started = {"process": psutil.Process().create_time(), "served": False}


def startup_seconds() -> float:
    """Seconds from this process's start to its first message (imports included); 0 for every later message
    (a Ray actor serves many; a SuperNode starts a process per message, its trainer service is kept)."""
    first = not _started["served"]
    _started["served"] = True
    return time.time() - _started["process"] if first else 0.0


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    """Local fairseq training from the global weights."""
    startup = startup_seconds()
    if is_secure_round(msg):
        return secure_train(msg, context)
    config = from_config_record(ClientConfig, msg.content[CONFIG])
    folder = client_folder(context, config.data_root)
    start = time.perf_counter()
    arrays = arrays_of(msg.content[ARRAYS])
    decode_seconds = time.perf_counter() - start
    try:
        result = node_trainer(context, config).fit(FitTask.of(config, folder, arrays))
    except ShardError as error:
        return broken_data_reply(msg, folder, error)
    start = time.perf_counter()
    reply_arrays = record_of(result.arrays, config.transport_dtype)
    serialize_seconds = decode_seconds + time.perf_counter() - start
    metrics = {
        **result.metrics,
        "serialize_seconds": serialize_seconds,
        "startup_seconds": startup,
        "trainer_start_seconds": result.metrics.get("trainer_start_seconds", 0.0),
        NUM_EXAMPLES: result.num_examples,
    }
    return client_reply(msg, folder, metrics, result.validation, **{ARRAYS: reply_arrays})


@client_app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Validation of the global weights on the client's valid split."""
    config = from_config_record(ClientConfig, msg.content[CONFIG])
    folder = client_folder(context, config.data_root)
    task = EvaluateTask(folder, arrays_of(msg.content[ARRAYS]), config.server_round)
    try:
        result = node_trainer(context, config).evaluate(task)
    except ShardError as error:
        return broken_data_reply(msg, folder, error)
    return client_reply(msg, folder, {**result.metrics, NUM_EXAMPLES: result.num_examples})
