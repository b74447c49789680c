"""The run store: every training run of the experiments and the campaign, trained once in a folder named by its
settings (``spec.py``: ``Options``, ``RunSpec``), for a budget (``budgets.py``), and then only read or resumed
(``store.py``: ``ensure_run``, ``ensure_runs``)."""
