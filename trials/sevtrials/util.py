"""Small shared helpers: logging with elapsed time, command running."""
import os
import subprocess
import sys
import time

T0 = time.monotonic()
_quiet = False


def set_quiet(q):
    global _quiet
    _quiet = q


def log(msg, *, always=False):
    if _quiet and not always:
        return
    sys.stderr.write(f"[trials {time.monotonic() - T0:7.1f}s] {msg}\n")
    sys.stderr.flush()


def run(cmd, *, check=True, capture=False, env=None, cwd=None, timeout=600):
    """Run a command (list), bounded in time."""
    r = subprocess.run(cmd, check=False, env=env, cwd=cwd, timeout=timeout,
                       stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                       stderr=subprocess.PIPE if capture else None, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"command failed ({r.returncode}): {' '.join(cmd)}\n"
                           f"{(r.stderr or '')[-2000:]}")
    return r


def cache_dir():
    return os.environ.get("SEVPEB_CACHE", "/var/cache/sevpeb")


def wait_until(pred, timeout, interval=0.05, what="condition"):
    """Poll pred() until it returns a truthy value; raise TimeoutError after timeout s."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
