def test_tiny_run_completes(run_tiny):
    record = run_tiny("task=rte")
    assert record["status"] == "completed"
    assert 0 <= record["metrics"]["best"]["metrics"]["dev"]["accuracy"] <= 100
