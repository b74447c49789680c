"""Long training runs across sessions: the campaign's ordered plan (``plan.py``), trained by ``resnet campaign``
(``train.py``: resumed where it stopped, several processes sharing the plan, finished weights shipped to a folder the
caller names), watched by ``resnet runs`` (``status.py``); and Table 6 on one GPU within a job's time limit
(``gpu.py``, ``gpu_summary.py``: ``resnet gpu-campaign``)."""
