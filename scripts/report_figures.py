"""Save the figures of a study's report.html as PNG files (what EXPERIMENTS.md shows).

    python scripts/report_figures.py runs/paper-mnist docs/figures/paper-mnist fig-eps fig-scatter

Writes OUT-<figure id>.png for each figure id given (the report's section ids: fig-saliency, fig-scatter,
fig-curves, fig-eps, fig-certified, fig-cost), quantized to a 256-colour palette to keep the repository small.
"""

from __future__ import annotations

import base64
import io
import re
import sys
from pathlib import Path

from PIL import Image


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    study, out, wanted = Path(argv[0]), argv[1], argv[2:]
    page = (study / "report.html").read_text()
    found = dict(re.findall(r"<h2 id='(fig-[a-z]+)'>.*?<img alt='[^']*' src='data:image/png;base64,([^']+)'",
                            page, re.S))
    missing = [w for w in wanted if w not in found]
    if missing:
        print(f"error: {study}/report.html has no figure {missing}; it has {sorted(found)}", file=sys.stderr)
        return 2
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    for name in wanted:
        image = Image.open(io.BytesIO(base64.b64decode(found[name]))).convert("RGB").quantize(256)
        target = Path(f"{out}-{name}.png")
        image.save(target, optimize=True)
        print(f"{target}: {target.stat().st_size // 1024} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
