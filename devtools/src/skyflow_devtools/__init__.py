"""Development tools used by tests, benchmarks and the demo.

Nothing here is imported by the plugin at run time.

* :mod:`skyflow_devtools.client` -- :class:`~.client.BaoClient`, a thin typed HTTP
  client for the OpenBao API, and the harness exception tree.
* :mod:`skyflow_devtools.openbao` -- start, stop and kill a real OpenBao server (dev mode or
  integrated storage).
* :mod:`skyflow_devtools.catalog` -- install plugins into a server the way an operator does.
* :mod:`skyflow_devtools.processes` -- the one poll loop, and finding and reaping plugin
  processes.
* :mod:`skyflow_devtools.ports` -- free ports on 127.0.0.1.
* :mod:`skyflow_devtools.cluster` -- a three-node integrated-storage cluster.
"""
