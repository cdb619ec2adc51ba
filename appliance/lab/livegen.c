/* Live-frames attack generator (BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES).
 *
 * The kernel runs this program once per repeat on a page of its page pool. It
 * does not copy the template into a recycled page again, so the program first
 * restores the frame from `livegen_template` (see livegen.h), then varies the
 * fields a real flood varies (spoofed source, ports, IP id, TCP sequence), fixes
 * the checksums incrementally (RFC 1624) and redirects the frame out of the
 * egress interface read from the config map. Nothing here is spliced from
 * Python: every value lives in `livegen_cfg` and `livegen_template`.
 */
#include <uapi/linux/bpf.h>
#include "livegen.h"

#ifndef LIVEGEN_TRIM_BYTES
#error "LIVEGEN_TRIM_BYTES (bytes the sender appends to every frame) comes from livegen.py"
#endif

#ifndef LIVEGEN_OFFSET_MASK
#define LIVEGEN_OFFSET_MASK 0xff  /* bytes: rewritten fields lie in the first 256 bytes of a frame */
#endif

BPF_ARRAY(livegen_cfg, struct livegen_config, 1);
BPF_ARRAY(livegen_template, struct livegen_template, 1);
BPF_PERCPU_ARRAY(livegen_frames, u64, 1);  /* frames the program handed to bpf_redirect */

static __always_inline __u16 csum_replace16(__u16 csum, __u16 old, __u16 new)
{
	/* RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'), byte order agnostic */
	__u32 sum = (__u16)~csum + (__u16)~old + new;
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/* Rewrite one 16-bit field (network order value) and fix the checksums that cover it. */
static __always_inline int rewrite16(void *data, void *data_end, __u32 off, __u16 value,
				     __u16 *ip_csum, __u16 *l4_csum)
{
	__u16 *field = data + (off & LIVEGEN_OFFSET_MASK);
	__u16 old;

	if ((void *)(field + 1) > data_end)
		return -1;
	old = *field;
	*field = value;
	if (ip_csum)
		*ip_csum = csum_replace16(*ip_csum, old, value);
	if (l4_csum)
		*l4_csum = csum_replace16(*l4_csum, old, value);
	return 0;
}

int livegen(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	struct livegen_config *cfg = livegen_cfg.lookup(&zero);
	struct livegen_template *tmpl = livegen_template.lookup(&zero);
	__u16 *ip_csum = NULL, *l4_csum = NULL;
	__u64 *frames;
	__u32 len;

	if (!cfg || !tmpl)
		return XDP_ABORTED;
	/* Only the frames to send come in on cfg->ingress_ifindex (see livegen.py); any other frame
	 * passes untouched. */
	if (ctx->ingress_ifindex != cfg->ingress_ifindex || !cfg->ingress_ifindex)
		return XDP_PASS;
	/* A recycled page holds what the last program along the way left in it (livegen.h). The
	 * length is 1..LIVEGEN_TEMPLATE_BYTES by construction, as the verifier wants it (a length of
	 * 0 becomes the whole array, longer than any frame: the helper refuses it). */
	len = ((tmpl->len - 1) & (LIVEGEN_TEMPLATE_BYTES - 1)) + 1;
	if (bpf_xdp_store_bytes(ctx, 0, tmpl->bytes, len))
		return XDP_ABORTED;
	/* The kernel rebuilds the frame it sends (length, headroom) from the context only when the
	 * program moved a context pointer; otherwise it keeps what the page's last user left, e.g.
	 * the length of a SYN-ACK a receiver shortened in place. Trimming the padding the sender
	 * appended moves data_end, and leaves the template's own length. (Moving data_meta did the
	 * same with one helper call too, but kernels such as 6.18.44-fc refuse bpf_xdp_adjust_meta
	 * to XDP programs: "program of this type cannot use helper".) */
	if (bpf_xdp_adjust_tail(ctx, -(int)LIVEGEN_TRIM_BYTES))
		return XDP_ABORTED;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (cfg->ip_csum_off) {
		ip_csum = data + (cfg->ip_csum_off & LIVEGEN_OFFSET_MASK);
		if ((void *)(ip_csum + 1) > data_end)
			return XDP_ABORTED;
	}
	if (cfg->l4_csum_off) {
		l4_csum = data + (cfg->l4_csum_off & LIVEGEN_OFFSET_MASK);
		if ((void *)(l4_csum + 1) > data_end)
			return XDP_ABORTED;
	}
	if (cfg->src_off) {
		__u32 rnd = bpf_get_prandom_u32() & cfg->src_mask;
		__u32 *src = data + (cfg->src_off & LIVEGEN_OFFSET_MASK);
		__u32 value;
		__u16 *pseudo = cfg->l4_pseudo ? l4_csum : NULL;

		if ((void *)(src + 1) > data_end)
			return XDP_ABORTED;
		value = (bpf_ntohl(*src) & ~cfg->src_mask) | rnd;
		if (rewrite16(data, data_end, cfg->src_off, bpf_htons(value >> 16), ip_csum, pseudo) ||
		    rewrite16(data, data_end, cfg->src_off + 2, bpf_htons(value & 0xffff), ip_csum, pseudo))
			return XDP_ABORTED;
	}
	if (cfg->ipid_off &&
	    rewrite16(data, data_end, cfg->ipid_off, (__u16)bpf_get_prandom_u32(), ip_csum, NULL))
		return XDP_ABORTED;
	if (cfg->sport_off && cfg->sport_span &&
	    rewrite16(data, data_end, cfg->sport_off,
		      bpf_htons(cfg->sport_min + bpf_get_prandom_u32() % cfg->sport_span), NULL, l4_csum))
		return XDP_ABORTED;
	if (cfg->dport_off && cfg->dport_span &&
	    rewrite16(data, data_end, cfg->dport_off,
		      bpf_htons(cfg->dport_min + bpf_get_prandom_u32() % cfg->dport_span), NULL, l4_csum))
		return XDP_ABORTED;
	if (cfg->seq_off) {
		__u32 seq = bpf_get_prandom_u32();

		if (rewrite16(data, data_end, cfg->seq_off, (__u16)(seq >> 16), NULL, l4_csum) ||
		    rewrite16(data, data_end, cfg->seq_off + 2, (__u16)seq, NULL, l4_csum))
			return XDP_ABORTED;
	}
	if (l4_csum && cfg->l4_udp && *l4_csum == 0)
		*l4_csum = 0xffff;
	frames = livegen_frames.lookup(&zero);
	if (frames)
		*frames += 1;
	return bpf_redirect(cfg->egress_ifindex, 0);
}
