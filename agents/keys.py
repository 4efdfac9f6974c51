"""`python -m agents.keys DIR [--client NAME ...]`: make the CurveZMQ keys a secured bus needs.

Writes, with zmq.auth.create_certificates:

    DIR/server.key, DIR/server.key_secret        the agents' key pair
    DIR/clients/NAME.key, NAME.key_secret        one key pair per client (default: "client")
    DIR/authorized_clients/NAME.key              the allow-list: client public keys only
    DIR/model_managers/NAME.key, NAME.key_secret one key pair per model manager (--model-manager)
    DIR/authorized_model_managers/NAME.key       the backend's allow-list of model managers

and prints the configuration that uses them. Existing key files are never overwritten (a
new server key would lock out every client that has the old public one); run it again
with new --client names to add clients. Secret key files are made readable by the owner only.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import zmq.auth

SERVER = "server"


def make_pair(directory: Path, name: str) -> tuple[Path, Path]:
    """(public, secret) key files for `name` in `directory`; made only if neither exists."""
    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    if public.exists() or secret.exists():
        raise FileExistsError(f"{public} or {secret} already exists; not overwriting a key")
    directory.mkdir(parents=True, exist_ok=True)
    zmq.auth.create_certificates(directory, name)
    secret.chmod(0o600)
    return public, secret


def make_keys(root: Path, clients: list[str], model_managers: list[str] | None = None) -> list[str]:
    """Make the server key pair (unless present), one pair per client and per model manager,
    each public key also in its allow-list; returns what was made."""
    made = []
    if not (root / f"{SERVER}.key_secret").exists():
        made += [str(p) for p in make_pair(root, SERVER)]
    for names, kind, allow_list in ((clients, "clients", "authorized_clients"),
                                    (model_managers or [], "model_managers", "authorized_model_managers")):
        allowed = root / allow_list
        allowed.mkdir(parents=True, exist_ok=True)
        for name in names:
            public, secret = make_pair(root / kind, name)
            shutil.copyfile(public, allowed / public.name)
            made += [str(public), str(secret), str(allowed / public.name)]
    return made


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Make CurveZMQ keys for voicebus.")
    parser.add_argument("dir", type=Path, help="where the keys go, e.g. keys")
    parser.add_argument(
        "--client", action="append", dest="clients", help="a client key pair to make (repeatable)"
    )
    parser.add_argument("--model-manager", action="append", dest="model_managers", default=[],
                        help="a model manager key pair to make, for the backend's CurveZMQ (repeatable)")
    args = parser.parse_args(argv)
    root: Path = args.dir.expanduser().resolve()
    try:
        clients = args.clients or ([] if args.model_managers else ["client"])
        made = make_keys(root, clients, args.model_managers)
    except (FileExistsError, OSError) as exc:
        print(f"voicebus: {exc}", file=sys.stderr)
        return 1
    for path in made:
        print(f"wrote {path}")
    print(
        "\nIn config/llm_config.yaml (or VOICEBUS__SECURITY__* variables):\n"
        "security:\n"
        "  curve_enabled: true\n"
        f"  server_secret_key_file: {root / (SERVER + '.key_secret')}\n"
        f"  authorized_clients_dir: {root / 'authorized_clients'}\n"
        "\nA client needs the server's public key and its own key pair:\n"
        f"  ClientConfig(server_public_key='{root / (SERVER + '.key')}',\n"
        f"               client_secret_key_file='{root / 'clients' / 'NAME.key_secret'}')"
        "\n\nModel managers on other hosts (the backend's CurveZMQ):\n"
        "security:\n"
        "  backend_curve_enabled: true\n"
        f"  authorized_model_managers_dir: {root / 'authorized_model_managers'}   # the agents\n"
        f"  server_public_key_file: {root / (SERVER + '.key')}               # each model manager\n"
        f"  model_manager_secret_key_file: {root / 'model_managers' / 'NAME.key_secret'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
