"""Memory of `zoo serve` under the worst request each limit still accepts: peak RSS during the request
and RSS after it, against the warm level (after ordinary requests), one server per bundle.

    python benchmarks/serve_limits.py IMAGE_BUNDLE TEXT_BUNDLE [--out benchmarks/results/serve_limits.json]

The peak is the kernel's VmHWM of the server process, reset before each request (writing 5 to
/proc/PID/clear_refs); Linux only."""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import httpx
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_http import PHOTO, Server  # noqa: E402  (the tests' real-server harness)

from serve.limits import Limits  # noqa: E402


def _status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def measure(server: Server, name: str, send) -> dict:
    pid = server.process.pid
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _status(pid, "VmRSS")
    start = time.perf_counter()
    response = send()
    seconds = time.perf_counter() - start
    time.sleep(0.5)
    row = {"request": name, "status": response.status_code, "seconds": round(seconds, 2),
           "rss_before_mib": round(before / 1024, 1), "peak_mib": round(_status(pid, "VmHWM") / 1024, 1),
           "rss_after_mib": round(_status(pid, "VmRSS") / 1024, 1)}
    print(json.dumps(row), flush=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image_bundle", type=Path)
    parser.add_argument("text_bundle", type=Path)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "serve_limits.json")
    args = parser.parse_args()
    limits = Limits()
    rows = []
    server = Server(args.image_bundle)
    try:
        server.wait_ready()
        url = f"{server.url}/v2/models/{server.model}"
        for _ in range(5):
            httpx.post(url + "/predict", content=PHOTO, headers={"content-type": "image/jpeg"}, timeout=60)
        warm = _status(server.process.pid, "VmRSS")
        side = int((limits.max_image_pixels / 1.6) ** 0.5)
        buffer = io.BytesIO()
        # a smooth gradient: within the body limit once compressed, the same decoding work as any 40 MP image
        Image.linear_gradient("L").resize((int(side * 1.6), side)).convert("RGB").save(buffer, "PNG")
        worst = buffer.getvalue()
        rows.append({"bundle": "image", "warm_mib": round(warm / 1024, 1), **measure(
            server, f"one {int(side * 1.6)}x{side} PNG ({len(worst) / 1e6:.1f} MB)",
            lambda: httpx.post(url + "/predict", content=worst, headers={"content-type": "image/png"}, timeout=300))})
        photos = [PHOTO] * limits.max_inputs
        rows.append({"bundle": "image", "warm_mib": round(warm / 1024, 1), **measure(
            server, f"{limits.max_inputs} concurrent photo requests",
            lambda: _concurrent(url + "/predict", photos))})
    finally:
        server.stop()
    server = Server(args.text_bundle)
    try:
        server.wait_ready()
        url = f"{server.url}/v2/models/{server.model}"
        for _ in range(5):
            httpx.post(url + "/predict", json={"inputs": ["an ordinary sentence to warm up"] * 8}, timeout=60)
        warm = _status(server.process.pid, "VmRSS")
        texts = [("lorem ipsum dolor sit amet " * 4000)[:limits.max_text_chars]] * limits.max_inputs
        rows.append({"bundle": "text", "warm_mib": round(warm / 1024, 1), **measure(
            server, f"predict: {limits.max_inputs} texts of {limits.max_text_chars:,} characters",
            lambda: httpx.post(url + "/predict", json={"inputs": texts}, timeout=300))})
        length = json.loads((args.text_bundle / "manifest.json").read_text())["preprocessing"]["max_length"]
        batch = limits.max_inputs
        body = {"inputs": [{"name": "input_ids", "shape": [batch, length], "datatype": "INT64", "data": [101] * (batch * length)},
                           {"name": "attention_mask", "shape": [batch, length], "datatype": "INT64", "data": [1] * (batch * length)}]}
        rows.append({"bundle": "text", "warm_mib": round(warm / 1024, 1), **measure(
            server, f"infer: {batch} x {length} tokens", lambda: httpx.post(url + "/infer", json=body, timeout=300))})
    finally:
        server.stop()
    for row in rows:
        row["after_over_warm"] = round(row["rss_after_mib"] / row["warm_mib"], 3)
    args.out.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


def _concurrent(url: str, bodies: list[bytes]):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(bodies)) as pool:
        replies = list(pool.map(lambda body: httpx.post(url, content=body, headers={"content-type": "image/jpeg"},
                                                        timeout=300), bodies))
    return max(replies, key=lambda reply: reply.status_code)


if __name__ == "__main__":
    sys.exit(main())
