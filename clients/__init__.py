"""Client-side tools: ``nereid bench``, a load generator in the spirit of Triton's perf_analyzer.

Read in this order: ``inputs`` (what to send), ``codec`` (how it looks on the wire),
``http1`` and ``transports`` (how it travels), ``loadgen`` (the engine, :func:`run_load`),
``report`` (percentiles, table, JSON), ``bench`` (the command line). Nothing here imports the
server: the clients speak the wire protocol only.
"""
