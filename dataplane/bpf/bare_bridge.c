/* A yardstick for benchmarks: the least a two-port XDP bridge can do. It checks
 * that an Ethernet header is there and redirects the frame to the other port
 * through a devmap, as Seawall's pass path ends, and does nothing else: no
 * lookup, no counter, no filter. Seawall's pass path is reported as a ratio to
 * it, which holds across CPUs where a ratio to `return XDP_DROP` does not. */
#include <uapi/linux/if_ether.h>

BPF_DEVMAP(bare_ports, 2);  /* slot 0: the egress port (loopback in BPF_PROG_TEST_RUN) */

int xdp_bare_bridge(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;

    if (data + sizeof(struct ethhdr) > data_end)
        return XDP_DROP;
    return bare_ports.redirect_map(0, XDP_PASS);
}
