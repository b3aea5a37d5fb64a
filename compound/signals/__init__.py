"""The signal bus: what one process must tell another (the server and the executor's
child process, the API processes and the queue workers, the stores of all of them),
as typed signals (bus.py), with one transport a module:

  bus.py          the signals, the `Signals` interface, LocalSignals (one process)
  socket_pair.py  SocketSignals: the child process's socket pair, pickled frames
  postgres.py     PgSignals: PostgreSQL LISTEN/NOTIFY (queue mode, the PostgreSQL store)

The store's own change notifications travel on it too: `Events` over the socket pair
(the child's commits on SQLite, for the server's hub), `Committed` over NOTIFY (a
commit's event range, for every other process's PostgreSQL store)."""
