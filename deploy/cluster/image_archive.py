"""Write a one-layer container image as a ``docker save`` archive, without any engine.

The local cluster needs two images no registry can give here: the sandbox ("pause") image and
CoreDNS. Each is one static binary, so the image is one layer holding it, plus a config that
names the entrypoint and user; ``ctr -n k8s.io images import`` reads the archive. The layer is
written deterministically (fixed owners and times), so the same binary gives the same image.

Usage: image_archive.py --name NAME:TAG --out FILE --entrypoint PATH [--user UID]
                        [--port N/tcp ...] SRC:DEST ...
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path


def _layer(files: list[tuple[Path, str]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        directories: set[str] = set()
        for _, dest in files:
            parts = dest.strip("/").split("/")[:-1]
            for depth in range(1, len(parts) + 1):
                directories.add("/".join(parts[:depth]))
        for directory in sorted(directories):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for source, dest in files:
            data = source.read_bytes()
            info = tarfile.TarInfo(dest.strip("/"))
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def write_archive(
    name: str,
    out: Path,
    entrypoint: str,
    user: str,
    ports: list[str],
    files: list[tuple[Path, str]],
) -> str:
    """Write the archive; return the image id (the config's digest)."""
    layer = _layer(files)
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    container_config: dict[str, object] = {"Entrypoint": [entrypoint], "User": user}
    if ports:
        container_config["ExposedPorts"] = {port: {} for port in ports}
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": container_config,
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created_by": f"deploy/cluster/image_archive.py ({name})"}],
        },
        sort_keys=True,
    ).encode()
    config_digest = hashlib.sha256(config).hexdigest()
    layer_path = f"{diff_id.removeprefix('sha256:')}/layer.tar"
    manifest = json.dumps(
        [{"Config": f"{config_digest}.json", "RepoTags": [name], "Layers": [layer_path]}]
    ).encode()
    with tarfile.open(out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, data in (
            (f"{config_digest}.json", config),
            (layer_path, layer),
            ("manifest.json", manifest),
        ):
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return "sha256:" + config_digest


def main(args: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--name", required=True, help="NAME:TAG of the image")
    parser.add_argument("--out", type=Path, required=True, help="archive to write")
    parser.add_argument("--entrypoint", required=True, help="path of the program in the image")
    parser.add_argument("--user", default="65532", help="numeric user (default 65532)")
    parser.add_argument("--port", action="append", default=[], help="exposed port, e.g. 53/udp")
    parser.add_argument("files", nargs="+", help="SRC:DEST, a file and its path in the image")
    options = parser.parse_args(args)
    files = []
    for item in options.files:
        source, _, dest = item.partition(":")
        if not dest.startswith("/"):
            parser.error(f"{item}: expected SRC:/absolute/path/in/the/image")
        files.append((Path(source), dest))
    print(
        write_archive(
            options.name, options.out, options.entrypoint, options.user, options.port, files
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
