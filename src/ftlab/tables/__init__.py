"""`python -m ftlab.tables`: the command README, CI and the issues name; the code is ftlab.report.build."""
