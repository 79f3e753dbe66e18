"""What travels between the server and the clients: record names, typed configs, weights on the wire.

A train or evaluate message holds ``arrays`` (the global weights, float32 or float16 on the
wire) and ``config`` (a ``ClientConfig``); a reply holds ``arrays`` (train only), ``metrics``
(scalars), ``client`` (the client's name: its folder's, never a path) and, when the train
message asked for it (``validate``), ``validation``: the client's validation of the global
weights it received, made before training, so the round's validation costs no second download.
A client whose data is broken replies with ``client`` alone, holding the error too. Config keys are the
settings' names (``local-updates``, ``eta-l``...), as on the command line and in the run config.
"""

import dataclasses
import io
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Type, TypeVar

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from numpy.lib import format as npy

ARRAYS, CONFIG, METRICS, CLIENT, VALIDATION = "arrays", "config", "metrics", "client", "validation"
CLIENT_NAME, BROKEN_DATA = "name", "broken-data"
NUM_EXAMPLES = "num-examples"  # Flower's strategies weigh replies by it
UPDATES = "updates"  # local updates a client made; the server's update count and DP's uniform weights
# SecAgg+ rounds speak Flower's legacy fitins/fitres records; a client's validation travels in its flat metrics
FITINS_PARAMETERS, FITINS_CONFIG, VALID_PREFIX = "fitins.parameters", "fitins.config", "valid_"

Config = TypeVar("Config")
NUMPY_STYPE = Array(np.zeros(0, np.float32)).stype  # how Flower serialises an ndarray: .npy bytes


def config_record(config: Any) -> ConfigRecord:
    """A dataclass as a ConfigRecord; keys are its field names with dashes."""
    return ConfigRecord({name.replace("_", "-"): value for name, value in dataclasses.asdict(config).items()})


def from_config_record(cls: Type[Config], record: Mapping[str, Any]) -> Config:
    """The dataclass ``cls`` from a ConfigRecord made by ``config_record`` (other keys are ignored)."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        key = f.name.replace("_", "-")
        if key in record:
            kind = typing.get_origin(hints[f.name]) or hints[f.name]
            values[f.name] = [str(v) for v in record[key]] if kind is list else kind(record[key])
    return cls(**values)


@dataclass
class LocalResult:
    """What a client's trainer returns after a round (the reply is made of it)."""

    arrays: Dict[str, np.ndarray]
    num_examples: int
    metrics: Dict[str, float]
    validation: Dict[str, float] = field(default_factory=dict)  # of the received weights, with num-examples


@dataclass
class ClientConfig:
    """What a train or evaluate message tells a client: the model to build, where data lives, what to do."""

    recipe: str
    overrides: List[str] = field(default_factory=list)
    label_rate: float = 100.0
    eta_l: float = 0.0  # the client's peak learning rate; 0: the recipe's
    data_root: str = ""  # simulation: the prepared data folder; deployment: empty (nodes know theirs)
    transport_dtype: str = "float32"
    num_updates: int = 0  # updates done before this round: the clients' LR schedules continue from there
    local_updates: int = 0
    local_epochs: int = 0
    epoch_rounds: int = 0  # local epochs: rounds x local epochs, which each client sizes its lr schedule to
    validate: bool = False  # train: validate the received weights first, reply with ``validation``
    site_processes: int = 1  # data-parallel ranks per client (--gpus-per-client N >= 2; a node's gpus=N wins)
    # fine-tuning: the pretrained model's config (JSON), hubert_ctc's model.w2v_args; nodes need no pretrained file
    encoder_args: str = ""
    server_round: int = 0  # set by Flower's strategies

    @classmethod
    def of(
        cls,
        settings,
        updates_done: int = 0,
        validate: bool = False,
        overrides: Optional[Sequence[str]] = None,
        encoder_args: str = "",
    ) -> "ClientConfig":
        """The config of a round of the run ``settings`` (``FederationSettings``) after ``updates_done`` updates;
        ``overrides``: the recipe overrides with the run's lr schedule (``schedule.plan_schedule``), default the
        settings' own; ``encoder_args``: see the field."""
        return cls(
            recipe=settings.recipe,
            overrides=list(settings.overrides if overrides is None else overrides),
            label_rate=float(settings.label_rate),
            eta_l=float(settings.eta_l),
            data_root=settings.data_root,
            transport_dtype=settings.transport_dtype,
            num_updates=updates_done,
            local_updates=settings.updates_per_round,
            local_epochs=settings.local_epochs,
            epoch_rounds=settings.num_server_rounds * settings.local_epochs,
            validate=validate,
            site_processes=max(1, int(settings.gpus_per_client)),
            encoder_args=encoder_args,
        )


def arrays_of(record: ArrayRecord) -> Dict[str, np.ndarray]:
    """Arrays of a record; half-precision transport is widened back to float32."""
    return {
        k: (a.astype(np.float32) if a.dtype == np.float16 else a)
        for k, a in ((k, v.numpy()) for k, v in record.items())
    }


def npy_header(data: bytes) -> Tuple[tuple, bool, np.dtype, int]:
    """Shape, Fortran order, dtype and data offset of .npy bytes, read with numpy's own reader."""
    stream = io.BytesIO(data)
    version = npy.read_magic(stream)
    readers = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}
    if version not in readers:
        raise ValueError(f"unsupported .npy version {version} in an array record")
    shape, fortran_order, dtype = readers[version](stream)
    return shape, fortran_order, dtype, stream.tell()


def view_of(array: Array) -> np.ndarray:
    """A read-only numpy view of an Array's bytes (``Array.numpy`` copies them); bytes that do not hold
    the array their header announces raise ``ValueError``."""
    if array.stype != NUMPY_STYPE:
        raise TypeError(f"an array serialised as {array.stype!r}, not as numpy's .npy bytes")
    shape, fortran_order, dtype, offset = npy_header(array.data)
    flat = np.frombuffer(array.data, dtype=dtype, count=int(np.prod(shape, dtype=np.int64)), offset=offset)
    return flat.reshape(shape, order="F" if fortran_order else "C")


def views_of(record: ArrayRecord) -> Dict[str, np.ndarray]:
    """Read-only views of a record's arrays, in their wire dtypes (see ``view_of``)."""
    return {k: view_of(v) for k, v in record.items()}


def npy_bytes_of(a: np.ndarray) -> Optional[bytes]:
    """The .npy bytes that ``a`` views whole (a C-ordered ``view_of`` result), else None."""
    base = a.base
    while isinstance(base, np.ndarray):
        base = base.base
    if not isinstance(base, bytes) or not a.flags.c_contiguous:
        return None
    start = a.__array_interface__["data"][0] - np.frombuffer(base, np.uint8).__array_interface__["data"][0]
    try:
        shape, fortran_order, dtype, offset = npy_header(base)
    except ValueError:
        return None
    whole = (offset, tuple(shape), dtype, fortran_order) == (start, a.shape, a.dtype, False)
    return base if whole and start + a.nbytes == len(base) else None


def record_of(arrays: Mapping[str, np.ndarray], transport_dtype: str = "float32") -> ArrayRecord:
    """A record of ``arrays``; float32 ones are sent as ``transport_dtype`` (float16 halves the traffic).
    An array that already views a record's bytes in the transport dtype is sent from those bytes, not copied."""

    def wire(a: np.ndarray) -> Array:
        a = a.astype(transport_dtype, copy=False) if a.dtype == np.float32 else a
        held = npy_bytes_of(a)
        if held is not None:
            return Array(dtype=str(a.dtype), shape=tuple(int(n) for n in a.shape), stype=NUMPY_STYPE, data=held)
        return Array(np.ascontiguousarray(a))

    return ArrayRecord({k: wire(np.asarray(v)) for k, v in arrays.items()})


def client_reply(
    msg: Message, folder: Path, metrics: Dict[str, Any], validation: Mapping[str, float] = (), **arrays: ArrayRecord
) -> Message:
    """A reply with this client's ``metrics``, its name (the folder's), its ``validation`` if any, and any
    ``arrays`` records."""
    content = RecordDict({**arrays, METRICS: MetricRecord(metrics), CLIENT: ConfigRecord({CLIENT_NAME: folder.name})})
    if validation:
        content[VALIDATION] = ConfigRecord(dict(validation))
    return Message(content, reply_to=msg)


def validation_of(reply: Message) -> Dict[str, float]:
    """The validation a train reply carries (metrics and ``num-examples``); empty when it has none."""
    if reply.has_error() or VALIDATION not in reply.content:
        return {}
    return {k: float(v) for k, v in reply.content[VALIDATION].items()}


def client_of(reply: Message) -> str:
    """The name of the client that sent ``reply`` (a reply without an error)."""
    return str(reply.content[CLIENT][CLIENT_NAME])


def broken_data_reply(msg: Message, folder: Path, error: Exception) -> Message:
    """The reply of a client that cannot train or validate because its data is broken: its name and the error."""
    client = ConfigRecord({CLIENT_NAME: folder.name, BROKEN_DATA: str(error)})
    return Message(RecordDict({CLIENT: client}), reply_to=msg)


def broken_data_of(reply: Message) -> str:
    """The data error a client replied with; empty when there is none."""
    return "" if reply.has_error() else str(reply.content[CLIENT].get(BROKEN_DATA, ""))


def message_bytes(messages: List[Message]) -> int:
    """Bytes of the weights that ``messages`` carry (as they travelled)."""
    return int(sum(r.count_bytes() for m in messages if m.has_content() for r in m.content.array_records.values()))
