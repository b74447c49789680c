"""What the experiments and the trainer write for people to read: reports (``report.py``), their verdicts against the
paper (``verdicts.py``, with the tests of ``stats.py``) and every figure (``plots.py``)."""
