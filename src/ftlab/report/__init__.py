"""Reporting from run records: tables (python -m ftlab.tables), protocol checks, did-not-learn gates, trivial
baselines, intervals, claims and figures."""
