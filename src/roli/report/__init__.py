"""Presenting results (no torch): collecting runs, seed groups, tables as data, the markdown and HTML renderers,
writing and archiving, and the paper's findings with their spec and statistics. `roli.report.write.write_report`
is the entry point (`roli report` on the command line).
"""
