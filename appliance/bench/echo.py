"""UDP echo endpoints of the latency part of `seawall bench compare`, each in its own pinned process.

    python -m appliance.bench.echo serve PORT CPU
    python -m appliance.bench.echo ping PORT CPU COUNT ROUNDS NAME=ADDRESS [NAME=ADDRESS ...]

`serve` echoes every datagram back and prints "ready" once bound. `ping` waits until every
server answers, then runs ROUNDS rounds; in each round it sends COUNT sequential echoes to each
server in turn and prints one JSON object as its last line: {name: [{"rtts_us": [...],
"lost": n}, ...one per round]}. Rounds interleave the paths, so that the load other programs
put on this shared machine falls on both paths alike.

Own processes, not threads of the bench: the bench process also runs the frame generator's
thread, and a client that shares its GIL waits for it. Both ends are pinned to the same vCPU:
the server's wake-up is then a switch on the local run queue, not an IPI to the other vCPU
(a VM exit here), and it is the same for the direct and the through path. The overhead of
Python's sendto/recvfrom is in both paths and cancels in the difference.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time

PAYLOAD_BYTES = 64                # UDP payload of one echo: an 8-byte sequence number and padding
LOST_AFTER_S = 0.5                # seconds before one echo counts as lost
READY_TIMEOUT_S = 10.0            # seconds for every server to answer a first echo


def serve(port: int, cpu: int) -> None:
    os.sched_setaffinity(0, {cpu})
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    print("ready", flush=True)
    while True:
        data, peer = sock.recvfrom(2048)
        sock.sendto(data, peer)


def rtt_samples(sock: socket.socket, server: str, port: int, count: int, first_seq: int = 0) -> tuple[list[float], int]:
    """RTTs in microseconds of `count` sequential echoes; lost ones are counted, not sampled."""
    sock.settimeout(LOST_AFTER_S)
    rtts: list[float] = []
    lost = 0
    for seq in range(first_seq, first_seq + count):
        payload = seq.to_bytes(8, "big") + b"\x00" * (PAYLOAD_BYTES - 8)
        t0 = time.perf_counter_ns()
        sock.sendto(payload, (server, port))
        try:
            while True:   # a late answer to an echo counted as lost is skipped
                data, _ = sock.recvfrom(2048)
                if data[:8] == payload[:8]:
                    break
        except TimeoutError:
            lost += 1
            continue
        rtts.append((time.perf_counter_ns() - t0) / 1000)
    return rtts, lost


def ping(port: int, cpu: int, count: int, rounds: int, servers: dict[str, str]) -> dict[str, list[dict]]:
    if count < 1 or rounds < 1 or not servers:
        raise ValueError(f"ping: count and rounds must be >= 1 and a server named (count={count}, rounds={rounds})")
    os.sched_setaffinity(0, {cpu})
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    seq = 0
    try:
        for name, address in servers.items():
            deadline = time.monotonic() + READY_TIMEOUT_S
            while not rtt_samples(sock, address, port, 1, seq)[0]:
                seq += 1
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no echo from {name} ({address}) within {READY_TIMEOUT_S}s")
            seq += 1
        out: dict[str, list[dict]] = {name: [] for name in servers}
        for _ in range(rounds):
            for name, address in servers.items():
                rtts, lost = rtt_samples(sock, address, port, count, seq)
                seq += count
                out[name].append({"rtts_us": [round(r, 2) for r in rtts], "lost": lost})
        return out
    finally:
        sock.close()


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "serve":
        serve(int(argv[1]), int(argv[2]))
        return 0
    if len(argv) >= 6 and argv[0] == "ping":
        servers = dict(arg.split("=", 1) for arg in argv[5:])
        print(json.dumps(ping(int(argv[1]), int(argv[2]), int(argv[3]), int(argv[4]), servers)))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
