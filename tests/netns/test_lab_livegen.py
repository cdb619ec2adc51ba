"""The live-frames generator sends its template frame every time, also when a receiver rewrote
earlier frames in place (issue 19: the random SYN flood's lost clients).

The kernel copies the template into a page only when the test run's page pool allocates the page.
A frame that a receiver rewrites and sends back (the appliance answers a SYN with a SYN-ACK built
in place, XDP_TX), and that is then dropped, returns its page to that pool while the run goes on;
the page is reused as it is, and so is the frame length the receiver left in it unless the
program moves a context pointer. Before the generator restored each frame from its template, it sent
those SYN-ACKs out again as "flood" frames: source MAC the lab server's, so the customer switch
learnt the server's MAC on its uplink and dropped real clients' SYNs to it (same port)."""

from __future__ import annotations

import signal
import threading
import uuid
from collections.abc import Callable

import pytest

from appliance.lab import netlink
from appliance.lab.livegen import FrameEdits, LiveFrameSender
from appliance.lab.nsenter import enter_netns

GENERATOR_MAC = "02:00:00:00:00:01"
RECEIVER_MAC = "02:00:00:00:00:02"
FRAMES = 20_000        # in one test run: far more than the page pool's pages, so pages are reused
TRIM = 4               # bytes the receiver cuts off its answer (a SYN's options are longer than its SYN-ACK's)
# On the receiving veth: count frames as the generator built them (source MAC GENERATOR_MAC),
# earlier answers (source MAC RECEIVER_MAC) and frames of another length than the template, then
# answer in place as the appliance's SYN authentication does (swap the MACs, shorten the frame,
# XDP_TX). The veths' own frames (IPv6 router solicitations) pass uncounted.
RECEIVER_XDP = r"""
#include <uapi/linux/if_ether.h>
BPF_ARRAY(seen, u64, 3);   /* 0: the template's MACs, 1: an earlier answer's, 2: not the template's length */
BPF_ARRAY(template_len, u32, 1);
int xdp_answer_in_place(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    u32 zero = 0, key;
    u32 *len = template_len.lookup(&zero);
    u64 *count;
    if ((void *)(eth + 1) > end || !len)
        return XDP_PASS;
    if (eth->h_source[0] != 0x02 || eth->h_source[1] || eth->h_source[2] || eth->h_source[3] ||
        eth->h_source[4] || (eth->h_source[5] != 0x01 && eth->h_source[5] != 0x02))
        return XDP_PASS;
    key = eth->h_source[5] == 0x02;
    count = seen.lookup(&key);
    if (count)
        __sync_fetch_and_add(count, 1);
    key = 2;
    count = seen.lookup(&key);
    if (count && end - data != *len)
        __sync_fetch_and_add(count, 1);
    unsigned char mac[ETH_ALEN];
    __builtin_memcpy(mac, eth->h_source, ETH_ALEN);
    __builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
    __builtin_memcpy(eth->h_dest, mac, ETH_ALEN);
    if (bpf_xdp_adjust_tail(ctx, -TRIM))
        return XDP_DROP;
    return XDP_TX;
}
int xdp_drop(struct xdp_md *ctx)
{
    return XDP_DROP;   /* the answers end here: their pages go back to the generator's pool */
}
"""


@pytest.fixture
def namespace():
    name = f"tlg{uuid.uuid4().hex[:6]}"
    netlink.create_namespace(name)
    yield name
    netlink.remove_namespace(name)


def _sending(namespace: str, ifindex: int, body: Callable[[LiveFrameSender], dict],
             ready: threading.Event | None = None) -> tuple[threading.Thread, dict]:
    """A thread that enters `namespace`, opens a generator on `ifindex` and runs `body` with it; the dict
    fills with what `body` returns, or "error" with what it raised. `ready` is set once the generator is
    compiled (or failed)."""
    outcome: dict = {}

    def run() -> None:
        try:
            enter_netns(namespace)
            sender = LiveFrameSender(ifindex)
            try:
                sender.configure(FrameEdits())
                if ready is not None:
                    ready.set()
                outcome.update(body(sender))
            finally:
                sender.close()
        except BaseException as exc:  # re-raised by the test
            outcome["error"] = exc
        finally:
            if ready is not None:
                ready.set()

    thread = threading.Thread(target=run, name="livegen-test", daemon=True)
    thread.start()
    return thread, outcome


def template_frame() -> bytes:
    from scapy.layers.inet import IP, TCP  # noqa: PLC0415
    from scapy.layers.l2 import Ether  # noqa: PLC0415

    return bytes(Ether(src=GENERATOR_MAC, dst=RECEIVER_MAC) / IP(src="198.18.0.1", dst="198.51.100.11")
                 / TCP(sport=40000, dport=80, flags="S", seq=1,
                       options=[("MSS", 1460), ("SAckOK", b""), ("WScale", 7)]))


def test_generator_sends_the_template_again_after_a_receiver_rewrote_a_frame_in_place(namespace):
    from bcc import BPF  # noqa: PLC0415 - the netns tier imports bcc only when it runs

    receiver = BPF(text=RECEIVER_XDP, cflags=[f"-DTRIM={TRIM}"])
    try:
        lengths = receiver["template_len"]
        lengths[lengths.Key(0)] = lengths.Leaf(len(template_frame()))
        with netlink.iproute(namespace) as ipr:
            netlink.add_veth(ipr, "gen", "rcv")
            for ifname, function in (("rcv", "xdp_answer_in_place"), ("gen", "xdp_drop")):
                ipr.link("set", index=netlink.index(ipr, ifname),
                         xdp_fd=receiver.load_func(function.encode(), BPF.XDP).fd)
                netlink.set_up(ipr, ifname)
            gen = netlink.index(ipr, "gen")
        def send(sender: LiveFrameSender) -> dict:
            sender.send(template_frame(), FRAMES)
            return {"sent": sender.frames_redirected()}

        thread, outcome = _sending(namespace, gen, send)
        thread.join(120)   # bcc compiles the generator first
        assert not thread.is_alive(), "generator did not finish"
        if "error" in outcome:
            raise outcome["error"]
        seen = receiver["seen"]
        as_built, rewritten, resized = (int(seen[seen.Key(k)].value) for k in (0, 1, 2))
        assert outcome["sent"] == FRAMES
        assert rewritten == 0, f"{rewritten} of {as_built + rewritten} frames were earlier answers sent again"
        assert resized == 0, f"{resized} of {as_built + rewritten} frames had an earlier answer's length"
        assert as_built > 0.9 * FRAMES, (as_built, FRAMES)
    finally:
        receiver.cleanup()


SIGNALLED_CALLS = 2_000      # runs at most, until one is cut short by a signal
FRAMES_PER_CALL = 2_000      # frames per run: a run long enough for a signal to land in it


def test_a_stop_during_a_run_ends_it_early_without_an_error(namespace):
    """`seawall attack` is stopped with SIGINT, whose handler sets the generator's stop event. With live
    frames, when the signal lands inside the bpf syscall the kernel ends the run with EINTR, which once
    ended the generator with an error instead of its summary (the FlowSpec saturation test's routed
    flood printed none); with frames written into the anchor pair (a kernel that refuses live frames),
    the set stop event ends the run between two writes. Each machine checks the path it sends with: the
    signal is always sent, and its handler sets the stop event only on the veth-pair path."""
    with netlink.iproute(namespace) as ipr:
        netlink.add_veth(ipr, "gen", "rcv")
        for ifname in ("gen", "rcv"):
            netlink.set_up(ipr, ifname)
        gen = netlink.index(ipr, "gen")
    ready = threading.Event()
    stop = threading.Event()
    methods = []

    def send(sender: LiveFrameSender) -> dict:
        methods.append(sender.method)
        asked, cut_short = 0, False
        for _ in range(SIGNALLED_CALLS):
            cut_short = sender.send(template_frame(), FRAMES_PER_CALL, stop) == 0   # 0: the run was ended early
            asked += FRAMES_PER_CALL
            if sender.frames_redirected() < asked:
                break                          # a run was cut short, and send() returned
        return {"asked": asked, "sent": sender.frames_redirected(), "cut_short": cut_short}

    def on_signal(*_args) -> None:
        # As `seawall attack`'s SIGINT handler (run by Python in the main thread) sets its stop event; with
        # live frames the event stays clear, so that only the kernel's EINTR can cut the run short.
        if methods and methods[0] != "xdp-live-frames":
            stop.set()

    previous = signal.signal(signal.SIGUSR1, on_signal)
    try:
        thread, outcome = _sending(namespace, gen, send, ready)
        ready.wait(120)    # bcc compiles the generator first
        while thread.is_alive():
            signal.pthread_kill(thread.ident, signal.SIGUSR1)
            thread.join(0.001)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    if "error" in outcome:
        raise outcome["error"]
    assert methods[0] in ("xdp-live-frames", "af-packet-xdp-redirect")
    assert 0 < outcome["sent"] < outcome["asked"], outcome   # a run was interrupted, and that was no error
    assert outcome["cut_short"], outcome                      # by the stop, not by frames lost on the way


PAIR_PPS = 20_000        # packets/s of each of the two generators
PAIR_S = 1.0             # seconds each


def _pair_of_generators(namespace: str) -> list[dict]:
    """Two generators sending at once out of `gen` in `namespace`, each in its own thread: their summaries."""
    from appliance.lab.attack import Stream  # noqa: PLC0415
    from appliance.lab.generator import Generator  # noqa: PLC0415

    outcomes: list[dict] = [{}, {}]

    def run(outcome: dict) -> None:
        try:
            enter_netns(namespace)
            stream = Stream("syn", (template_frame(),), FrameEdits())
            outcome.update(Generator([stream], PAIR_PPS, PAIR_S, "gen").run().to_dict())
        except BaseException as exc:  # re-raised by the test
            outcome["error"] = exc

    threads = [threading.Thread(target=run, args=(o,), name="generator-test", daemon=True) for o in outcomes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)   # bcc compiles each generator first
        assert not thread.is_alive(), "generator did not finish"
    for outcome in outcomes:
        if "error" in outcome:
            raise outcome["error"]
    return outcomes


def _transmitted(namespace: str) -> int:
    """Frames `gen` transmitted from XDP."""
    def read() -> int:
        counter = netlink.XdpTransmitted("gen")
        try:
            return counter.read()
        finally:
            counter.close()
    return netlink.in_namespace(namespace, read)


# Alone (tests/netns/conftest.py): each generator must submit 90 % of its rate (15,295 of 20,000 beside
# another module, ci50).
@pytest.mark.alone
def test_two_generators_on_one_interface_each_count_only_what_it_transmitted(namespace):
    """The veth counts per interface. A scenario's SYN and UDP floods share the lab's uplink, and each
    once subtracted the other's transmit errors as well (the UDP flood reported 0 frames sent), and
    frames the kernel dropped before the driver counted as sent."""
    from bcc import BPF  # noqa: PLC0415

    with netlink.iproute(namespace) as ipr:
        netlink.add_veth(ipr, "gen", "rcv")
        netlink.set_up(ipr, "gen")
        rcv = netlink.index(ipr, "rcv")
    # The receiving veth down: no frame leaves.
    sent_before = _transmitted(namespace)
    failing = _pair_of_generators(namespace)
    sent_after = _transmitted(namespace)
    assert sent_after == sent_before
    for summary in failing:
        assert summary["submitted"] >= PAIR_PPS * PAIR_S * 0.9, summary
        assert (summary["transmitted"], summary["xmit_errors"]) == (0, summary["submitted"]), summary
        assert summary["achieved_pps"] == 0 and sum(summary["per_second"]) == 0, summary

    # Up, and with a program there, it takes them: each generator's own, and together what the veth sent.
    receiver = BPF(text="int xdp_drop(struct xdp_md *ctx) { return XDP_DROP; }")
    try:
        with netlink.iproute(namespace) as ipr:
            ipr.link("set", index=rcv, xdp_fd=receiver.load_func(b"xdp_drop", BPF.XDP).fd)
            netlink.set_up(ipr, "rcv")
        passing = _pair_of_generators(namespace)
        sent_end = _transmitted(namespace)
    finally:
        receiver.cleanup()
    for summary in passing:
        assert summary["transmitted"] + summary["xmit_errors"] == summary["submitted"], summary
        assert summary["transmitted"] >= 0.9 * summary["submitted"] > 0, summary
    assert sum(s["transmitted"] for s in passing) == sent_end - sent_after
