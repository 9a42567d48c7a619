"""llmpulse: streaming monitoring for LLM applications.

Applications import :class:`Monitor` (the client shim); the rest of the
package is the server side (embedded stack, store, command line).
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["KafkaSecurity", "Monitor", "__version__"]


def __getattr__(name: str) -> object:  # lazy: importing llmpulse must stay cheap for apps
    if name == "Monitor":
        from llmpulse.monitor import Monitor

        return Monitor
    if name == "KafkaSecurity":
        from llmpulse.kafka_security import KafkaSecurity

        return KafkaSecurity
    raise AttributeError(name)
