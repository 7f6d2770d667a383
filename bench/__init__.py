"""Benchmark scripts (run each as ``.venv/bin/python bench/<script>.py``, see bench/README.md) and
what they share: ``bench.harness``; the sessions benchmark's parts, ``bench.session_clients`` and
``bench.session_report``; the baseline server, ``bench/echo_server.py``."""
