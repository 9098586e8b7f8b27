"""What is measured on a model while it trains (the optimizer's own diagnostics are in
`hptransfer.optim.diagnostics`).

coord       coord_check: activation RMS per layer over the first steps, across widths
alignment   AlignmentProbe: the alignment exponents alpha, omega, u of every linear layer
updates     update_ratios: RMS of a step's update over RMS of the weight, per layer
"""
