"""A model split across an isolated cable: llama.cpp's RPC backend between two appliances.

llama.cpp's RPC protocol has no authentication or encryption, and its deserializer has a
history of remote-code-execution bugs, so it never faces the cable. Each end's RPC socket
listens or connects on loopback only; between the ends runs mutual TLS with certificates
exchanged by hand and pinned by their SHA-256 (`tls`), relayed byte for byte (`relay`).

* `tls`: each appliance's key and self-signed certificate, the pins, the TLS 1.3 contexts;
* `stream`: the two kinds of stream a session joins, plain TCP on loopback and TLS on the cable;
* `listener`: accepting connections, each on its own thread, and cutting them off;
* `relay`: `pump` (one session's bytes, both ways, counted), the engine's `Tunnel` and the
  worker's `Gate`;
* `rpc`: the bindings to ggml's RPC backend (register a worker's devices; serve ours);
* `settings`: the ``[cluster]`` configuration read into the guard's one exception;
* `worker`: ``anticloud worker``, the RPC server's side, with its own ledger;
* `engine`: the engine's side, from the guard's verdict to ``cluster.start``.
"""
