"""Self-contained HTML reports: ``eval.py`` (``clsx eval --report``), ``bench.py``
(``clsx bench --report``) and the page parts they share (``page.py``).

``sweep.py`` draws ``clsx sweep``'s table of trials and its plot.

Each builder takes the command's result plus context and returns the page as a string;
:func:`clsx.reports.page.write_report` writes it atomically. Nothing here prints.
"""
