"""Synchronous QMP client for the trials and the QEMU-level tests, on QEMU's
own `qemu.qmp` package (PyPI `qemu.qmp`, installed by scripts/lib.sh).

The interface the callers use: `QMP(path, timeout, connect_timeout)`;
`cmd(name, **args)` returns the command's "return" value and raises
`QMPError` (`.cmd`, `.cls`, `.desc`) on an error reply, `EOFError` when
QEMU hung up, `TimeoutError` when no reply came within `timeout`;
`events` is the list of every event received so far (nothing is dropped;
the caller clears it); `close()`.

Each instance runs its own asyncio event loop, so one client may be created
in one thread and used in another while other clients are in use elsewhere
(the churn thread). `qemu.qmp.legacy.QEMUMonitorProtocol` takes the
creating thread's loop, which two threads cannot run at once; hence
`QMPClient` driven directly, which is what the legacy class wraps.
"""
import asyncio
import time

from qemu.qmp import ConnectError, ExecInterruptedError, ExecuteError, QMPClient


class QMPError(RuntimeError):
    def __init__(self, cmd, err):
        self.cmd, self.cls = cmd, err.get("class", "")
        self.desc = err.get("desc", str(err))
        super().__init__(f"{cmd}: {self.desc}")


class QMP:
    def __init__(self, path, timeout=30.0, connect_timeout=30.0):
        self.timeout = timeout
        self._events = []
        self._loop = asyncio.new_event_loop()
        self._client = None
        deadline = time.monotonic() + connect_timeout
        try:
            while True:
                client = QMPClient(str(path))
                try:
                    self._run(client.connect(path), max(0.1, deadline - time.monotonic()))
                    self._client = client
                    break
                except ConnectError as e:
                    if not isinstance(e.exc, (FileNotFoundError, ConnectionRefusedError)):
                        raise
                except TimeoutError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"QMP socket {path} did not accept within {connect_timeout:.0f}s")
                time.sleep(0.05)
        except BaseException:
            self._loop.close()
            raise

    def _run(self, coro, timeout):
        return self._loop.run_until_complete(asyncio.wait_for(coro, timeout))

    @property
    def events(self):
        """Every event received so far, oldest first (received while a command ran)."""
        if self._client is not None:
            self._events.extend(dict(m) for m in self._client.events.clear())
        return self._events

    def cmd(self, name, **args):
        if self._client is None:
            raise EOFError("QMP connection closed")
        try:
            return self._run(self._client.execute(name, args or None), self.timeout)
        except ExecuteError as e:
            raise QMPError(name, {"class": e.error_class, "desc": str(e)}) from None
        except ExecInterruptedError as e:
            raise EOFError(f"QMP connection closed during {name}") from e
        finally:
            self.events  # move what arrived before the reply into the list

    def close(self):
        if self._client is None:
            return
        self.events
        client, self._client = self._client, None
        try:
            self._run(client.disconnect(), 10)
        except Exception:
            pass   # the connection had already failed: nothing left to close
        self._loop.close()
