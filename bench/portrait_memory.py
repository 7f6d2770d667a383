"""Peak memory and time of decoding one uploaded portrait (``decode_image``), per kind of image.

    .venv/bin/python bench/portrait_memory.py

Each case runs in a fresh subprocess; peak RSS growth is sampled every 2 ms (``testing.fuzz.PeakRSS``:
what C decoders allocate included). Prints a markdown table: image, bytes, outcome, +MB, ms.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = {  # name -> Python expression of the image bytes (testing.fuzz helpers)
    "JPEG photo 4000x4000": "image_bytes('JPEG', side=4000)",
    "PNG photo 2000x2000": "image_bytes('PNG', side=2000)",
    "PNG photo 4000x4000 (16 MP)": "image_bytes('PNG', side=4000)",
    "PNG black 4000x4000 RGB (16 MP)": "png_declaring(4000, 4000, colour_type=2)",
    "PNG black 5000x5000 RGB (25 MP)": "png_declaring(5000, 5000, colour_type=2)",
    "PNG black 7000x7000 RGB (49 MP)": "png_declaring(7000, 7000, colour_type=2)",
    "PNG black 7000x7000 RGBA (49 MP)": "png_declaring(7000, 7000, colour_type=6)",
}
CHILD = """
import json, sys, time
sys.path.insert(0, {root!r})
from testing.fuzz import PeakRSS, image_bytes, png_declaring
from pipelines.talking_head.face import decode_image
data = {expr}
decode_image(image_bytes('PNG', side=64))  # imports and first-call costs out of the figure
t0 = time.perf_counter()
with PeakRSS() as peak:
    try:
        out = decode_image(data)
        outcome = f"{{out.shape[1]}}x{{out.shape[0]}}"
    except Exception as exc:
        outcome = f"{{type(exc).__name__}}: {{str(exc)[:60]}}"
print(json.dumps({{"bytes": len(data), "outcome": outcome, "mb": peak.growth_mb,
                  "ms": (time.perf_counter() - t0) * 1000}}))
"""


def main() -> None:
    print("| image | bytes | outcome | peak +MB | ms |\n|---|---|---|---|---|")
    for name, expr in CASES.items():
        out = subprocess.run([sys.executable, "-c", CHILD.format(root=str(ROOT), expr=expr)], capture_output=True,
                             text=True, timeout=300, cwd=ROOT)
        if out.returncode:
            print(f"| {name} | | failed: {out.stderr.strip().splitlines()[-1:]} | | |")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {name} | {r['bytes']:,} | {r['outcome']} | {r['mb']:.0f} | {r['ms']:.0f} |")


if __name__ == "__main__":
    main()
