"""Sweeps: expand a spec into runs, extend LR grids adaptively, run them resumably.

- spec.py: the TOML sweep spec -> :class:`SweepSpec` -> runs (grid product, LR ranges,
  tokens-per-parameter horizon)
- search.py: [E]'s adaptive LR search as a pure state machine
- worker.py: one run in a worker process (lock, train, record)
- executors.py: supervised local processes or Ray tasks behind one interface
- preflight.py: what the runs need from the machine (device, data length), checked first
- runner.py: the scheduling loop (skip finished, retry crashed workers, advance searches)
- progress.py: the progress line on stderr
- ls.py: the status screen of a results directory (`hptransfer ls`)
"""

from hptransfer.sweep.runner import run_sweep
from hptransfer.sweep.search import LRSearch
from hptransfer.sweep.spec import Run, SweepSettings, SweepSpec, load_spec, parse_spec

__all__ = ["LRSearch", "Run", "SweepSettings", "SweepSpec", "load_spec", "parse_spec", "run_sweep"]
