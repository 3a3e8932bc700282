"""A ``pika`` that fails on import, for the bench smoke tests (``tests/test_bench_smoke.py``).

With ``pika`` importable, ``dramatiq.get_broker()`` called before any broker was set builds a
RabbitMQ broker; with this one first on ``PYTHONPATH`` it raises instead, so a bench that leans on
Dramatiq's implicit default broker fails its smoke test here rather than on a machine with pika.
"""

raise RuntimeError(
    "Dramatiq's implicit default broker was asked for (dramatiq.get_broker() with no broker set): "
    "a bench must build or import the broker it measures"
)
