"""descent's benchmark: optimizer steps against torch.optim, next to the bandwidth roofline.

Run ``python -m descent.bench`` (``--quick`` for a two-minute version); it writes
``BENCHMARKS.md``. Benchmarks are not tests: nothing here fails on a timing.
"""
