"""Analysis: a run's raw tables read back, and every derived number (fairness, aggregates, USL
fits, recovery) computed once into a frozen ``Analysis``."""
