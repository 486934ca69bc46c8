"""The key that signs VERP return paths: feedback.secret, or one generated once into
data_dir/feedback.key (0600), so a bounce that comes back days later (or after a restart)
still names its recipient. In cluster mode one derived from cluster.key_file signs (the same on
every node), the node's own file still reading what it signed before.

Owns: that file. Must never: sign or parse (feedback.verp does).
"""
from __future__ import annotations

import os
import secrets
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from smtprelay.config import Config


def load_secrets(config: "Config") -> list[bytes]:
    """The signing key first; any later one would be added after it (a rotation keeps reading
    the old one)."""
    if config.feedback.secret:
        return [config.feedback.secret.encode()]
    shared: list[bytes] = []
    if config.cluster.postgres is not None and config.cluster.key_file is not None:
        from smtprelay.cluster.secrets import derived     # signs from now on; the node's own key still reads
        shared = [derived(config.cluster.key_file, "verp")]
    path = config.server.data_dir / "feedback.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass        # another process created it meanwhile
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32))
    return shared + [path.read_text().strip().encode()]
