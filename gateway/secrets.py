"""Where a secret the gateway needs comes from: a file, an environment variable, or a systemd
credential -- never the YAML file itself.

The HSM user PIN and the TLS key passphrase are read through :class:`PinSource`. This module
knows nothing of PKCS#11: the config names a source without loading the HSM library.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gateway import files
from gateway.errors import PinSourceError


@dataclass(frozen=True)
class PinSource:
    """Where the user PIN comes from. Never the YAML file itself.

    ``file``: a path whose content (one line) is the PIN; ``env``: an environment variable;
    ``credential``: a systemd credential name, read from ``$CREDENTIALS_DIRECTORY/<name>``.
    """

    kind: Literal["file", "env", "credential"]
    name: str

    def read(self) -> str:
        """Return the PIN, or raise ``PinSourceError`` saying where it was looked for."""
        if self.kind == "env":
            value = os.environ.get(self.name)
            if value is None:
                raise PinSourceError(f"HSM PIN: environment variable {self.name} is not set")
            return _one_line(value, f"environment variable {self.name}")
        if self.kind == "credential":
            directory = os.environ.get("CREDENTIALS_DIRECTORY")
            if not directory:
                raise PinSourceError(
                    f"HSM PIN: systemd credential {self.name!r} requested but "
                    "$CREDENTIALS_DIRECTORY is not set (add LoadCredential= to the unit)"
                )
            return self._read_file(Path(directory) / self.name)
        if self.kind == "file":
            return self._read_file(Path(self.name))
        raise PinSourceError(f"HSM PIN: unknown source kind {self.kind!r}")

    @staticmethod
    def _read_file(path: Path) -> str:
        """Bounded and regular files only (:mod:`gateway.files`): a FIFO or device named as
        the PIN file must not hang the daemon's start."""
        try:
            text = files.read_bounded(path, files.SECRET_MAX).decode("utf-8")
        except files.FileMissingError:
            raise PinSourceError(f"HSM PIN: file {path} does not exist") from None
        except files.FileDeniedError:
            raise PinSourceError(f"HSM PIN: file {path} is not readable by this user") from None
        except files.FileError as exc:
            raise PinSourceError(f"HSM PIN: {path}: {exc.why}") from None
        except UnicodeDecodeError:
            raise PinSourceError(f"HSM PIN: file {path} is not UTF-8 text") from None
        return _one_line(text, f"file {path}")


def _one_line(value: str, where: str) -> str:
    pin = value.rstrip("\r\n")
    if not pin or "\n" in pin:
        raise PinSourceError(f"HSM PIN: {where} must hold exactly one non-empty line")
    return pin
