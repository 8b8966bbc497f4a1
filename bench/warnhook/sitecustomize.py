"""Every Python warning in full, with the stack that raised it, for bench/device_check.sh: Python
imports this module at start-up in every process whose PYTHONPATH holds this folder (pytest, the
benchmarks, the processes they start). The first time a warning (category, text, place) is seen it
is printed with its stack; repeats are counted and listed at exit. Any sitecustomize further down
the path (the machine's own) still runs."""

from __future__ import annotations

import atexit
import importlib.util
import os
import sys
import traceback
import warnings
from collections import Counter

_HERE = os.path.dirname(os.path.abspath(__file__))
_seen: Counter = Counter()


def _show(message, category, filename, lineno, file=None, line=None) -> None:
    key = (category.__name__, str(message), filename, lineno)
    _seen[key] += 1
    if _seen[key] > 1:
        return
    stack = "".join(traceback.format_stack()[:-1])
    print(f"\n=== WARNING {category.__name__} at {filename}:{lineno} (pid {os.getpid()})\n{message}\n"
          f"--- raised from:\n{stack}=== end of warning", file=sys.stderr, flush=True)


def _repeats() -> None:
    for (category, text, filename, lineno), count in _seen.items():
        if count > 1:
            print(f"=== WARNING {category} at {filename}:{lineno} was raised {count} times: {text[:200]}",
                  file=sys.stderr, flush=True)


def _chain() -> None:
    """Run the next sitecustomize on the path, which this module hides."""
    for folder in sys.path:
        candidate = os.path.join(folder or os.getcwd(), "sitecustomize.py")
        if os.path.abspath(folder or os.getcwd()) != _HERE and os.path.isfile(candidate):
            spec = importlib.util.spec_from_file_location("_machine_sitecustomize", candidate)
            if spec is not None and spec.loader is not None:
                spec.loader.exec_module(importlib.util.module_from_spec(spec))
            return


warnings.showwarning = _show
warnings.simplefilter("always")
atexit.register(_repeats)
_chain()
