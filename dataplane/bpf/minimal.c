/* The floor for benchmarks: an XDP program that drops every frame and does
 * nothing else. Seawall's per-packet cost is reported as a ratio to this. */
int xdp_minimal(struct xdp_md *ctx)
{
    return XDP_DROP;
}
