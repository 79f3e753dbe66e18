"""fairseq's DataLoader workers, in a client process that runs threads, start from a fork server and train."""

import subprocess
import sys

from tests.helpers import TINY

ONE_ROUND_WITH_A_THREAD_RUNNING = """
import sys, threading
from pathlib import Path
import torch.multiprocessing as mp
from fedhubert_plugin.federation.client.local_trainer import LocalTrainer
from fedhubert_plugin.federation.client.work import FitTask, TrainerSpec
from fedhubert_plugin.recipes import recipe_initial_model

recipe, folder = sys.argv[1], Path(sys.argv[2])
threading.Thread(target=threading.Event().wait, daemon=True).start()  # as a Ray actor's or the service's
overrides = ("common.cpu=true", "dataset.num_workers=2")
_, start = recipe_initial_model(recipe, list(overrides), 100, 8)
result = LocalTrainer(TrainerSpec(recipe, overrides, label_rate=100)).fit(
    FitTask(folder, start, local_updates=2, server_round=1)
)
print(mp.get_start_method(), result.metrics["updates"], result.metrics["loss"])
"""


def test_data_workers_of_a_client_running_threads_start_from_a_fork_server(client_shard):
    out = subprocess.run(
        [sys.executable, "-c", ONE_ROUND_WITH_A_THREAD_RUNNING, str(TINY), str(client_shard)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    method, updates, loss = out.stdout.split()[-3:]
    assert (method, updates) == ("forkserver", "2") and 0 < float(loss) < 20
