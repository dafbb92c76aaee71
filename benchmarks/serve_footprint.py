"""Install footprint and cold start of the serve-only dependency set, in a fresh virtual
environment: `pip install zoo[EXTRAS]` (no torch, no tensorflow), the size of what it installed,
`import serve` time, and `serve.load` + first prediction time.

    python benchmarks/serve_footprint.py BUNDLE_DIR INPUT [--extras cpu,image] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink()) / 1e6


def timed(python: str, code: str, *args: str) -> float:
    start = time.perf_counter()
    subprocess.run([python, "-c", code, *args], check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("input")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--extras", default="cpu,image", help="cpu,image (image bundles) or cpu,text (text bundles)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        venv = Path(tmp) / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        python = str(venv / "bin" / "python")
        site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   check=True, capture_output=True, text=True).stdout.strip())
        baseline = size_mb(site)
        subprocess.run([python, "-m", "pip", "install", "-q", f"{ROOT}[{args.extras}]"], check=True)
        packages = subprocess.run([python, "-m", "pip", "list", "--format", "json"], check=True, capture_output=True,
                                  text=True).stdout
        names = sorted(p["name"].lower() for p in json.loads(packages))
        installed = size_mb(site) - baseline
        import_s = statistics.median(timed(python, "import serve") for _ in range(args.repeats))
        empty_s = statistics.median(timed(python, "pass") for _ in range(args.repeats))
        first = ("import sys, serve; p = serve.load(sys.argv[1]); p.predict([sys.argv[2]])")
        cold_s = statistics.median(timed(python, first, str(args.bundle), args.input) for _ in range(args.repeats))
    report = {"extras": args.extras, "installed_mb": round(installed, 1), "packages": names,
              "torch_or_tensorflow": [n for n in names if n.startswith(("torch", "tensorflow"))],
              "python_start_s": round(empty_s, 3), "import_serve_s": round(import_s - empty_s, 3),
              "load_and_first_prediction_s": round(cold_s - empty_s, 3), "bundle": str(args.bundle)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"serve_footprint_{args.extras.replace(',', '_')}.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
