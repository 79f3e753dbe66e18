"""The plugin registers its fairseq task on import and as a fairseq user dir."""

import subprocess
import sys

from tests.helpers import PLUGIN_DIR


def test_import_registers_task_built_on_hubert_pretraining():
    from fairseq.tasks import TASK_DATACLASS_REGISTRY, TASK_REGISTRY
    from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig, HubertPretrainingTask

    import fedhubert_plugin  # noqa: F401

    task_cls = TASK_REGISTRY["fed_hubert_pretraining"]
    assert issubclass(task_cls, HubertPretrainingTask) and task_cls is not HubertPretrainingTask
    assert issubclass(TASK_DATACLASS_REGISTRY["fed_hubert_pretraining"], HubertPretrainingConfig)
    assert TASK_REGISTRY["hubert_pretraining"] is HubertPretrainingTask  # fairseq's own name untouched


def test_common_user_dir_registers_task_in_a_fresh_interpreter():
    code = (
        "import argparse\n"
        "from fairseq import utils\n"
        "from fairseq.tasks import TASK_REGISTRY\n"
        "assert 'fed_hubert_pretraining' not in TASK_REGISTRY\n"
        f"utils.import_user_module(argparse.Namespace(user_dir={str(PLUGIN_DIR)!r}))\n"
        "print(TASK_REGISTRY['fed_hubert_pretraining'].__name__)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "FedHubertPretrainingTask"
