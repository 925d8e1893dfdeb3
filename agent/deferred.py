"""Placeholders for standard modules a dependency imports at its top but the agent does not run.

paho-mqtt imports ``urllib.request`` when it loads, to read proxy settings on connect, and
reads them only when PySocks is installed (the agent does not ship it). That one import
brings ``http.client``, ``email`` and the rest: ~1.2 MB resident for the life of the agent,
which ``agent.http`` otherwise takes care never to load before a request needs it.

:func:`defer` puts a placeholder module in ``sys.modules``. ``import urllib.request`` then
binds the placeholder; the first use of any name in it (``urllib.request.getproxies``,
``from urllib.request import urlopen``) imports the real module, replaces the placeholder
everywhere the import system keeps it, and answers from the real module. So whoever needs
the module gets the real one, just later; at worst the memory is spent as it was before.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import types
from typing import Any

__all__ = ["defer", "loaded"]
_lock = threading.RLock()  # the real import may import other deferred modules


class _Deferred(types.ModuleType):
    """Stands in for a module until one of its names is used."""

    def __getattr__(self, name: str) -> Any:  # only for names the placeholder lacks: all but the dunders set here
        return getattr(_load(self), name)

    def __dir__(self) -> list[str]:
        return dir(_load(self))


def defer(name: str) -> bool:
    """Install a placeholder for ``name`` unless it is loaded already; True if installed."""
    with _lock:
        if name in sys.modules:
            return False
        spec = importlib.util.find_spec(name)  # finds the file; imports the parent package only
        if spec is None:
            return False
        placeholder = _Deferred(name)
        placeholder.__spec__ = spec  # not marked initializing: ``import name`` returns the placeholder as is
        placeholder.__loader__ = spec.loader
        placeholder.__package__ = spec.parent
        sys.modules[name] = placeholder
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, placeholder)  # ``import a.b`` then ``a.b.x`` reads it here
        return True


def loaded(name: str) -> bool:
    """Whether ``name`` is really imported (not only a placeholder)."""
    mod = sys.modules.get(name)
    return mod is not None and not isinstance(mod, _Deferred)


def _load(placeholder: _Deferred) -> types.ModuleType:
    name = placeholder.__name__
    with _lock:
        current = sys.modules.get(name)
        if current is not None and current is not placeholder:
            return current  # loaded already (through another reference to the placeholder)
        sys.modules.pop(name, None)
        try:
            real = importlib.import_module(name)  # also sets it on the parent package
        except BaseException:
            sys.modules.setdefault(name, placeholder)
            raise
        return real
