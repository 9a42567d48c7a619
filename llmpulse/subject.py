"""The data subject of an event (its optional ``user`` field), pseudonymised.

An app may tag an event with ``user`` so that everything about one person can
be found and erased later (``llmpulse erase --user``). With
``Monitor(redact=True)`` the shim sends not the identifier but a keyed hash of
it, :func:`hash_user`: HMAC-SHA-256 with the key from ``LLMPULSE_USER_KEY``
(or a key passed in), truncated to 128 bits, hex, prefixed ``u1:``. Hashing is
deterministic, so ``llmpulse erase --user alice`` finds the hashed rows by
hashing ``alice`` the same way; it must therefore run with the same key.

Without a key the hash is salted with a fixed, public salt: that hides an
identifier from a casual reader but not from someone who can guess candidates
(e-mail addresses can be enumerated). Set ``LLMPULSE_USER_KEY`` (a random
secret of at least 16 bytes, kept like a password) to make the hash a
pseudonym nobody without the key can reverse.

>>> hash_user("alice", key=b"0123456789abcdef")
'u1:fdbf8b1cacd3d578e062d0e41104357d'
>>> hash_user("alice", key=b"0123456789abcdef") == hash_user("alice", key=b"another key 1234")
False
>>> is_hashed(hash_user("bob")), is_hashed("bob")
(True, False)
>>> user_forms("alice", key=b"0123456789abcdef")
('alice', 'u1:fdbf8b1cacd3d578e062d0e41104357d')
"""

from __future__ import annotations

import hashlib
import hmac
import os

__all__ = ["USER_KEY_ENV", "hash_user", "is_hashed", "user_forms", "user_key"]

USER_KEY_ENV = "LLMPULSE_USER_KEY"

_PREFIX = "u1:"
_DEFAULT_SALT = b"llmpulse:user:v1"


def user_key(key: bytes | str | None = None) -> bytes:
    """The hashing key: ``key`` if given, else ``$LLMPULSE_USER_KEY``, else the public salt."""
    if key is None:
        key = os.environ.get(USER_KEY_ENV) or None
    if key is None:
        return _DEFAULT_SALT
    return key.encode() if isinstance(key, str) else bytes(key)


def hash_user(user: str, key: bytes | str | None = None) -> str:
    """The pseudonym of ``user`` (idempotent: a value already hashed is returned as is)."""
    if is_hashed(user):
        return user
    digest = hmac.new(user_key(key), user.encode(), hashlib.sha256).hexdigest()
    return _PREFIX + digest[:32]


def is_hashed(value: str) -> bool:
    """Whether ``value`` has the form :func:`hash_user` produces."""
    if len(value) != len(_PREFIX) + 32 or not value.startswith(_PREFIX):
        return False
    return all(c in "0123456789abcdef" for c in value[len(_PREFIX):])


def user_forms(user: str, key: bytes | str | None = None) -> tuple[str, ...]:
    """Every stored form of ``user``: as sent in clear, and hashed."""
    return tuple(dict.fromkeys((user, hash_user(user, key))))
