import sys
from pathlib import Path

import torch

# tests run on 2 cores next to other work: one thread keeps timings steady and results exact
torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).parent))
