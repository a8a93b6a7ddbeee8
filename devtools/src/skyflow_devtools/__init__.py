"""Development tools used by tests, benchmarks and the demo.

Nothing here is imported by the plugin at run time.

* :mod:`skyflow_devtools.client` -- :class:`~.client.BaoClient`, a thin typed HTTP
  client for the OpenBao API, and the harness exception tree.
* :mod:`skyflow_devtools.openbao` -- start a real OpenBao server (dev mode or
  integrated storage) and install plugins into it the way an operator does.
* :mod:`skyflow_devtools.cluster` -- a three-node integrated-storage cluster.
"""
