"""A soak of one engine: many malformed but signed messages, then many clients editing at once.

    python tests/stress.py --messages 100000 --clients 8 --jobs 25

starts `videograin serve` on the tiny model and sends it MESSAGES random requests (wrong types, fields of
every msgpack type, NaN and huge numbers, headers that are not maps or not msgpack), each signed and fresh
as SPEC.md §2 asks, so that each must get exactly one reply; none may crash or hang the engine. Then CLIENTS
peers at once each submit JOBS jobs and must get every frame of each, once, in order. It prints the rates
and the engine's memory before and after. tests/test_protocol_fuzz.py runs it small; the hardening issue's
full figures come from the command above (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import random
import string
import sys
import tempfile
import threading
import time
from pathlib import Path

import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conformance import RawPeer, collect_stream, inline_job, now_ms, start_engine
from conftest import limit

TYPES = ["hello", "submit", "check", "track", "cancel", "status", "attach", "ping", "shutdown", "teleport", "", "frame"]
FIELDS = ["job", "from_frame", "versions", "settings", "inline", "frames", "masks", "control_maps",
          "result_encoding", "preview", "client", "part_macs", "regions", "source", "ts"]
WINDOW = 16  # requests awaiting their replies at once (SPEC.md §5)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def random_value(rng: random.Random, depth: int = 0):
    """Any msgpack value: scalars of each type (NaN, infinities and 64-bit extremes included), lists, maps."""
    kinds = 9 if depth < 3 else 7
    kind = rng.randrange(kinds)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice([0, -1, 2**63 - 1, -2**63, 2**64 - 1, rng.randint(-2**40, 2**40)])
    if kind == 3:
        return rng.choice([float("nan"), float("inf"), float("-inf"), -0.0, 1e308, rng.uniform(-1e6, 1e6)])
    if kind == 4:
        return "".join(rng.choices(string.printable + "é☃\0", k=rng.randrange(24)))
    if kind == 5:
        return rng.randbytes(rng.randrange(24))
    if kind == 6:
        return rng.choice(TYPES)
    if kind == 7:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    return {random_value(rng, 3) if rng.random() < 0.1 else rng.choice(FIELDS + ["x", "width", "part"]):
            random_value(rng, depth + 1) for _ in range(rng.randrange(5))}


def random_message(rng: random.Random, number: int) -> tuple[bytes, list[bytes]]:
    """A header (bytes) and parts. A request the engine would act on for real is defused: a shutdown
    becomes a status, a submit, check or track is inline (random paths never read this machine's files)."""
    roll = rng.random()
    if roll < 0.1:
        return rng.randbytes(rng.randrange(1, 64)), []
    if roll < 0.2:
        return msgpack.packb(random_value(rng, 1), use_bin_type=rng.random() < 0.5), []
    header = {"v": rng.choice([1, 1, 1, 1, 0, 2, "1", None]), "type": rng.choice(TYPES), "ts": now_ms()}
    if rng.random() < 0.95:
        header["id"] = f"fuzz-{number}" if rng.random() < 0.9 else random_value(rng, 3)
    for name in rng.sample(FIELDS, rng.randrange(5)):
        header[name] = random_value(rng)
    if header["type"] == "shutdown":
        header["type"] = "status"
    if header["type"] in ("submit", "check", "track"):
        header["inline"] = True
    parts = [rng.randbytes(rng.randrange(64)) for _ in range(rng.randrange(3))]
    return msgpack.packb(header, use_bin_type=True), parts


def fuzz(info: dict, pid: int, count: int, seed: int = 0) -> dict[str, float]:
    """Send `count` random requests, WINDOW at a time; every one must get its one reply."""
    rng, peer = random.Random(seed), RawPeer(info)
    before, started, sent, answered = rss_mib(pid), time.monotonic(), 0, 0
    try:
        while answered < count:
            while sent < count and sent - answered < WINDOW:
                header, parts = random_message(rng, sent)
                body = [header, *parts]
                peer.send_frames([peer.signature(body), *body])
                sent += 1
            got = peer.recv(timeout=limit(30))
            if got is None:
                raise AssertionError(f"the engine answered {answered} of {sent} messages, then nothing for 30 s")
            reply = got[0]
            streamed = reply["type"] in ("progress", "frame", "matte", "attention", "done")
            if streamed or ("job" in reply and reply["type"] == "error"):
                continue  # the stream of a job a lucky message submitted
            if reply["type"] == "accepted":
                peer.send({"type": "cancel", "job": reply["job"]})
                sent += 1  # the cancel's reply counts too
                count += 1
            answered += 1
    finally:
        peer.close()
    elapsed = time.monotonic() - started
    return {"messages": count, "seconds": elapsed, "per_second": count / elapsed, "rss_before_mib": before,
            "rss_after_mib": rss_mib(pid)}


def clients(info: dict, count: int, jobs: int) -> dict[str, float]:
    """`count` peers at once, each submitting `jobs` jobs one after another and collecting every frame."""
    failures: list[str] = []
    started = time.monotonic()

    def run(client: int) -> None:
        peer = RawPeer(info)
        try:
            for number in range(jobs):
                header, parts = inline_job(frames=2, steps=1)
                job = peer.request(header, parts, timeout=60)["job"]
                stream = collect_stream(peer, job, timeout=600)
                frames = [m[0]["index"] for m in stream if m[0]["type"] == "frame"]
                if stream[-1][0]["type"] != "done" or frames != [0, 1]:
                    failures.append(f"client {client}, job {number}: frames {frames}, end {stream[-1][0]}")
        except Exception as exc:  # noqa: BLE001  (reported below, with the other clients' results)
            failures.append(f"client {client}: {exc!r}")
        finally:
            peer.close()

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures
    elapsed = time.monotonic() - started
    return {"jobs": count * jobs, "seconds": elapsed, "jobs_per_second": count * jobs / elapsed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=25, help="jobs per client")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="videograin-stress-") as folder:
        process, info, _ = start_engine(Path(folder))
        try:
            print("fuzz:", fuzz(info, process.pid, args.messages, args.seed), flush=True)
            print("clients:", clients(info, args.clients, args.jobs), flush=True)
            print(f"engine alive: {process.poll() is None}, RSS {rss_mib(process.pid):.0f} MiB")
        finally:
            process.kill()
            process.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
