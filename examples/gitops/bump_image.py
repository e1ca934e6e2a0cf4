"""Set the tag of one image in every Kubernetes manifest under k8s/ (run in the config repo's working copy).

    python3 bump_image.py registry.example.com/shop/api 1.4.2
"""

from __future__ import annotations

import re
import sys
from pathlib import Path


def bump(root: Path, image: str, tag: str) -> list[Path]:
    pattern = re.compile(rf"^(\s*(?:-\s*)?image:\s*[\"']?){re.escape(image)}:[\w.\-]+([\"']?\s*)$", re.MULTILINE)
    changed = []
    for manifest in sorted(root.glob("k8s/**/*.yaml")):
        text = manifest.read_text()
        new = pattern.sub(rf"\g<1>{image}:{tag}\g<2>", text)
        if new != text:
            manifest.write_text(new)
            changed.append(manifest)
    return changed


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: bump_image.py IMAGE TAG")
    changed = bump(Path.cwd(), sys.argv[1], sys.argv[2])
    if not changed:
        sys.exit(f"no manifest under k8s/ uses {sys.argv[1]}")
    for path in changed:
        print(f"bumped {path.relative_to(Path.cwd())}")
