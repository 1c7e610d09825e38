"""Plots drawn from run records and benchmark output."""
