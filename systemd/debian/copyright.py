"""Write the Debian copyright file of the evpay-agent package (called by build-deb.sh).

``python copyright.py LICENSE SITE_PACKAGES``: evpay-agent's own licence, then one paragraph per
distribution installed in the venv (name, version, licence from its metadata, where its licence
text lies in the installed tree).
"""

from __future__ import annotations

import os
import sys
import time
from importlib import metadata
from pathlib import Path

PREFIX = "/opt/evpay-agent/venv/lib"
COMMON = {"Apache-2.0": "/usr/share/common-licenses/Apache-2.0"}


def _field(dist: metadata.Distribution, name: str) -> str:
    values = dist.metadata.get_all(name) or []
    return str(values[0]) if values else ""


def _licence(dist: metadata.Distribution) -> str:
    meta = dist.metadata
    expression = _field(dist, "License-Expression")
    if expression:
        return str(expression)
    classifiers = [
        c.split(" :: ")[-1] for c in meta.get_all("Classifier") or [] if c.startswith("License ::")
    ]
    if classifiers:
        return ", ".join(classifiers)
    text = _field(dist, "License").strip()
    return text.splitlines()[0] if text else "see the licence files"


def main(licence_file: str, site: str) -> int:
    site_path = Path(site)
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH") or time.time())
    year = time.gmtime(epoch).tm_year
    lib = f"{PREFIX}/{site_path.parent.name}/site-packages"
    lines = [
        "evpay-agent: card payment at EV chargers with Payter P6X / Apollo terminals",
        "",
        f"Copyright {year} the evpay-agent contributors",
        "License: Apache-2.0",
        "",
        "Licensed under the Apache License, Version 2.0 (the 'License'); you may not use this",
        "software except in compliance with the License. On Debian systems the complete text of the",
        f"Apache License, Version 2.0 is in {COMMON['Apache-2.0']}; it is also in",
        f"{lib}/evpay_agent-*.dist-info/licenses/{Path(licence_file).name}.",
        "",
        "This package includes, in /opt/evpay-agent/venv, these Python distributions, each under its",
        "own licence; the licence texts are in each distribution's .dist-info directory there.",
        "",
    ]
    dists = sorted(metadata.distributions(path=[str(site_path)]), key=lambda d: d.metadata["Name"].lower())
    for dist in dists:
        name = dist.metadata["Name"]
        if name == "evpay-agent":
            continue
        files = [str(f) for f in dist.files or [] if "licen" in str(f).lower() or "copying" in str(f).lower()]
        lines.append(f"{name} {dist.version}: {_licence(dist)}")
        home = _field(dist, "Home-page") or next(
            (u.split(",", 1)[1].strip() for u in dist.metadata.get_all("Project-URL") or []), ""
        )
        if home:
            lines.append(f"  {home}")
        lines.extend(f"  {lib}/{f}" for f in files)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
