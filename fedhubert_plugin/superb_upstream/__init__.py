"""The SUPERB hidden-set upstream folder that ``fedhubert export --superb DIR`` writes.

``expert.py`` and ``hubconf.py`` here are copied into DIR as they are, beside ``model.pt`` (the
checkpoint in s3prl's converted HuBERT format). They import torch and s3prl only, never
fedhubert: the folder is what the SUPERB hidden-set submission template asks for, and it loads
on a machine where fedhubert is not installed.
"""

from pathlib import Path

FILES = ("expert.py", "hubconf.py")
HERE = Path(__file__).parent
