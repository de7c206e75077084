"""The process runtime: it knows no mail.

``supervisor`` (the master's loop), ``worker`` (one worker's event loop and drain),
``listeners`` (the sockets the master binds), ``lmdbcache`` (the DNS cache the workers share),
``metrics`` and ``metricsserver`` (Prometheus, merged over the processes), ``logs`` (set-up,
reopen, fault tracebacks) and ``process`` (names, privileges, state directory, leaving a fork).
"""
