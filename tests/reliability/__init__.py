"""Reliability and security: bad input, fuzzing, overload, deadlines, shutdown, soak and auth (issue 7).

Every test here talks to real ``python -m service`` processes on 127.0.0.1 and is bounded in time. With
``RELIABILITY_RESULTS=path.json`` set, the figures they measure are written there (see ``report.py``).
"""
