"""Password hashes: scrypt (RFC 7914) with a per-user random salt, compared in constant time.

Stored as ``scrypt$N$r$p$salt_hex$hash_hex``, so the cost can be raised later without breaking
existing users. N=2**14, r=8, p=1 is the interactive-login setting of the scrypt paper (16 MiB,
tens of milliseconds).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

N, R, P = 2**14, 8, 1
SALT_BYTES = 16
KEY_BYTES = 32
MIN_LENGTH = 8


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(SALT_BYTES)
    key = _scrypt(password, salt, N, R, P)
    return f"scrypt${N}${R}${P}${salt.hex()}${key.hex()}"


def verify_password(password: str, stored: str) -> bool:
    """True if ``password`` matches ``stored``; a malformed hash never matches."""
    try:
        scheme, n, r, p, salt, key = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = bytes.fromhex(key)
        got = _scrypt(password, bytes.fromhex(salt), int(n), int(r), int(p))
    except ValueError:
        return False
    return hmac.compare_digest(got, expected)


# Compared against when the user does not exist, so a wrong name costs as long as a wrong password.
DUMMY_HASH = f"scrypt${N}${R}${P}${'00' * SALT_BYTES}${'00' * KEY_BYTES}"


def check_strength(password: str) -> None:
    if len(password) < MIN_LENGTH:
        raise ValueError(f"password too short: {len(password)} characters, at least {MIN_LENGTH} needed")


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=64 * 1024 * 1024, dklen=KEY_BYTES)
