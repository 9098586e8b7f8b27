"""Experiments built on the library: the quickstart demo, the per-role constant tuner, and the
reproductions of the papers' findings (one module per bespoke analysis under ``repro/``).
Their sweep specs ship as package data (hptransfer/recipes/)."""
