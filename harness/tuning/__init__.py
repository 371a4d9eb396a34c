"""Equal-budget hyper-parameter tuning on validation data (``harness tune``); see ``driver.py``."""
