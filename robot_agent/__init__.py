"""The robot agent (``ars robot``): camera source, inference with a latest-wins mailbox,
hard-region mining into a bounded on-disk store, Transfer Data, and verified hot model updates
with rollback, all over one MQTT link (see docs/protocol.md).

Modules: ``sources`` (camera), ``mailbox``, ``inference`` (worker, running model), ``frames``
(crop and preview encoding), ``candidates`` (store), ``transfer``, ``model_store`` (current and
previous on disk), ``model_update`` (receiver, swap, rollback), ``agent`` (composition and
command dispatch), ``cli``.
"""
