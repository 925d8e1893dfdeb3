"""``edgefleet-controller init``: create the secrets every replica shares, once.

Writes into ``--secrets-dir`` (give it to every replica as ``EDGEFLEET_SECRETS_DIR``,
e.g. a Kubernetes Secret):

    keys/director.pem        the director's Ed25519 key (signs desired states)
    keys/tuf/online.pem      the TUF snapshot/timestamp key
    ca/ca.key, ca/ca.pem     the device CA
    tuf/1.root.json          root v1, signed by the root keys
    tuf/1.targets.json       targets v1 (empty), signed by the release keys

and the offline keys into ``--offline-keys-dir`` (``root-<i>.pem``, ``release-<i>.pem``):
move each to its holder's offline machine and delete it here (docs/operations.md,
"Key ceremony"). The first replica to start seeds the database from ``tuf/``.
Nothing is overwritten: an existing key is an error.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, Targets

from controller.identity.pki import DeviceCA
from controller.release.imagerepo import DEFAULT_EXPIRY, FileMetaStore, ImageRepository
from shared.signing import generate_private_key_file


def init(secrets: Path, offline: Path, *, n_root: int, root_threshold: int, n_release: int, release_threshold: int) -> list[Path]:
    """Create every shared secret and the offline keys; returns the files written."""
    if not 1 <= root_threshold <= n_root or not 1 <= release_threshold <= n_release:
        raise SystemExit("thresholds must be between 1 and the number of keys")
    existing = [
        p for p in (secrets / "keys" / "director.pem", secrets / "tuf" / "1.root.json", secrets / "ca" / "ca.key") if p.exists()
    ]
    if existing:
        raise SystemExit(
            f"refusing to overwrite {existing[0]}: these secrets exist already (rotate keys as docs/operations.md says)"
        )
    written: list[Path] = []

    def key(path: Path) -> CryptoSigner:
        signer = CryptoSigner(generate_private_key_file(path))
        written.append(path)
        return signer

    key(secrets / "keys" / "director.pem")
    online = key(secrets / "keys" / "tuf" / "online.pem")
    DeviceCA.open(secrets / "ca", create=True)
    written += [secrets / "ca" / "ca.key", secrets / "ca" / "ca.pem"]
    roots = [key(offline / f"root-{i}.pem") for i in range(1, n_root + 1)]
    releases = [key(offline / f"release-{i}.pem") for i in range(1, n_release + 1)]
    staging = offline / ".staging"
    repo = ImageRepository(FileMetaStore(staging))
    repo.create_root(roots, releases, online, root_threshold, release_threshold)
    repo.md["targets"] = Metadata(
        Targets(expires=repo.md["root"].signed.expires - DEFAULT_EXPIRY["root"] + DEFAULT_EXPIRY["targets"])
    )
    md = repo.md["targets"]
    for s in releases[:release_threshold]:
        md.sign(s, append=True)
    out = secrets / "tuf"
    out.mkdir(parents=True, exist_ok=True)
    (out / "1.root.json").write_bytes(repo.md["root"].to_bytes())
    (out / "1.targets.json").write_bytes(md.to_bytes())
    written += [out / "1.root.json", out / "1.targets.json"]
    for p in sorted(staging.rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    staging.rmdir()
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="edgefleet-controller init", description=__doc__.splitlines()[0])
    p.add_argument("--secrets-dir", type=Path, required=True, help="shared by every replica (EDGEFLEET_SECRETS_DIR)")
    p.add_argument("--offline-keys-dir", type=Path, required=True, help="root and release keys, to be moved offline")
    p.add_argument("--root-keys", type=int, default=3)
    p.add_argument("--root-threshold", type=int, default=2)
    p.add_argument("--release-keys", type=int, default=3)
    p.add_argument("--release-threshold", type=int, default=2)
    a = p.parse_args(argv)
    for path in init(
        a.secrets_dir,
        a.offline_keys_dir,
        n_root=a.root_keys,
        root_threshold=a.root_threshold,
        n_release=a.release_keys,
        release_threshold=a.release_threshold,
    ):
        print(f"wrote {path}")
    print(f"give every replica EDGEFLEET_SECRETS_DIR={a.secrets_dir.resolve()}; move {a.offline_keys_dir} offline")
    return 0
