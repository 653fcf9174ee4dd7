#!/usr/bin/env python3
"""Print the bcrypt hash of the sandbox's status page password, making the
password (and its hash) on first use in DIR (mode 0600), like the sandbox's
other generated secrets.

  scripts/status_password.py DIR        -> prints the hash (DIR/status_password holds the password)
"""

import os
import secrets
import sys
import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import crypt  # noqa: E402  (Python 3.11's; bcrypt through libcrypt)


def main(directory: str) -> int:
    os.makedirs(directory, mode=0o700, exist_ok=True)
    password_file = os.path.join(directory, "status_password")
    hash_file = os.path.join(directory, "status_password.bcrypt")
    if not os.path.exists(password_file):
        with open(os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", encoding="ascii") as out:
            out.write(secrets.token_urlsafe(18) + "\n")
    with open(password_file, encoding="ascii") as handle:
        password = handle.read().strip()
    hashed = ""
    if os.path.exists(hash_file):
        with open(hash_file, encoding="ascii") as handle:
            hashed = handle.read().strip()
    # The same hash on every run (idempotent Caddyfile) as long as it matches the password.
    if not hashed or crypt.crypt(password, hashed) != hashed:
        hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=1 << 10))
        with open(os.open(hash_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="ascii") as out:
            out.write(hashed + "\n")
    print(hashed)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1]))
