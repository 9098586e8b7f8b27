"""From a results table to transfer metrics; numpy, pandas and scipy only (no torch).

find_optima    per-(setting, width) optimal LR and loss, with a quadratic fit in ln(lr)
lr_curves      seed-aggregated loss per (setting, width, lr), diverged points flagged
fit_lr_law     eta*(N) = C N^-beta and our fit-quality E
fit_loss_law   L*(N) = L_inf + A N^-alpha
fit_transfer   per setting: beta, E, alpha, gamma, kappa, R_inf and transfer penalties
transfer_verdict  per setting: optima per width, drift, penalty and the verdict (transfers/drifts)
coord_slopes   log-log slope of activation RMS against width, per layer and step
"""

from hptransfer.analysis.coord import coord_slopes
from hptransfer.analysis.optimum import DEFAULT_BY, find_optima, lr_curves
from hptransfer.analysis.scaling import fit_loss_law, fit_lr_law, fit_transfer
from hptransfer.analysis.transfer import transfer_verdict

__all__ = [
    "DEFAULT_BY",
    "coord_slopes",
    "find_optima",
    "fit_loss_law",
    "fit_lr_law",
    "fit_transfer",
    "lr_curves",
    "transfer_verdict",
]
