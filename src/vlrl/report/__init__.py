"""The before/after report: ``reports/<profile>/report.md`` plus PNG figures.

:mod:`~vlrl.report.document` builds it from files only; :mod:`~vlrl.report.analysis` holds the
computations (paired tests, gaming counts, the reward's parts), :mod:`~vlrl.report.markdown` the
escaping that keeps data from breaking the Markdown, :mod:`~vlrl.report.plots` the figures.
"""

from vlrl.report.document import ReportInputs, build_report

__all__ = ["ReportInputs", "build_report"]
