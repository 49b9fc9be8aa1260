"""The benchmark suite: periodic_fast beside arq, rq and gearmand in one run.

``python -m bench`` (see :mod:`bench.suite.cli`) runs the micro-benchmarks of
the codec and the timer wheel, then the end-to-end workloads W1-W5 against our
server and the peers, and writes a results folder (JSON, Markdown, PNG plots).

Modules:

* :mod:`bench.suite.common`: sizes, shared-memory counters, RSS, percentiles;
* :mod:`bench.suite.procs`: redis-server and gearmand on free loopback ports;
* :mod:`bench.suite.jobs`: the job handlers the peers' workers import;
* :mod:`bench.suite.harness`: submitters + workers in separate processes;
* :mod:`bench.suite.ours`: the workloads on a Periodic server;
* :mod:`bench.suite.peers`: the same workloads on arq, rq and gearmand;
* :mod:`bench.suite.micro`: the codec and wheel reports, parsed;
* :mod:`bench.suite.report`: Markdown, goals and plots.
"""
