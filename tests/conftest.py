"""Set up every test process: the serial run's, and each pytest-xdist worker's (`make test`
runs the suite in parallel, one worker per core: see the Makefile)."""

import os
import sys
from pathlib import Path

import torch

# no test may touch the network; set before anything imports huggingface_hub, which reads
# these once (conftest is imported before any test module, in every worker)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

# tests run one per core (xdist) next to other work: one thread each keeps timings steady,
# results exact and the cores not oversubscribed
torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).parent))
