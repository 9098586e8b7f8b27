"""The sweep report: a results directory -> ``report.html`` and ``summary.json``.

`build` loads the runs, computes the verdict (analysis.transfer) and draws the figures;
`page` renders the page through the Jinja2 template in ``templates/``.
"""

from hptransfer.report.build import ReportWarning, build_report, load_sweep, setting_columns

__all__ = ["ReportWarning", "build_report", "load_sweep", "setting_columns"]
