// SPDX-License-Identifier: Apache-2.0
/*
 * The policy tick's per-destination passes over baselines, one row at a time (policy/native.py
 * compiles this file and calls it through ctypes).
 *
 * numpy makes one pass over a whole (N, C) array per operation: detection and learning at a
 * million destinations were a dozen such passes over 48 MB arrays each, plus the gathers of the
 * baseline rows by slot and the scatters back (~165 ms of a tick on the CPUs measured). Here
 * each element is read once, computed and written once.
 *
 * The arithmetic is numpy's, operation by operation and in the same order, so the results are
 * the same bits: compiled with -ffp-contract=off (no fused multiply-add, which rounds once where
 * numpy rounds twice) and without -ffast-math; `np_max` is numpy's maximum (NaN propagates, the
 * first operand wins a tie). policy/baseline.py's docstring is the model; the arrays are C
 * contiguous float64 (mean, var, learned seconds: [row][class]) and uint8 masks.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* The traffic classes' count (policy/native.py defines it from dataplane.constants.TrafficClass): rows
 * of that many classes take loops the compiler unrolls; any other count works the same, slower. */
#ifndef SW_CLASSES
#error "SW_CLASSES undefined"
#endif

/* Words a destination's counter row may have (sw_slot_rates's delta buffer; policy/native.py checks). */
#define SW_MAX_COUNTER_WORDS 64

static inline double np_max(double a, double b)
{
	return (a >= b || a != a) ? a : b;
}

/*
 * The flood-onset candidates of policy/onset.py, chosen while detection goes over the elements: an
 * element is one when its row is valid, it is not anomalous, pps - mean > pps·jump_share (a jump over
 * the baseline mean) and pps > threshold·min_share. While there are at most `keep` of them their flat
 * numbers (row·classes + class) go to `flat` in ascending order; past that, `flat` holds the `keep` of
 * highest ratio = pps / max(threshold, 1) (equal ratios: the lower flat number), in no order, with their
 * ratios in `ratio` (the caller sorts them). `found` counts them all. The selection is a binary
 * min-heap on (ratio, -flat number): its root is the candidate that goes first; a later candidate has
 * the higher flat number, so it replaces the root only with a higher ratio.
 */
struct sw_onset {
	double jump_share;
	double min_share;
	int64_t keep;
	int64_t found;
	int64_t *flat;
	double *ratio;
};

static inline int heap_worse(const double *ratio, const int64_t *flat, int64_t a, int64_t b)
{
	return ratio[a] < ratio[b] || (ratio[a] == ratio[b] && flat[a] > flat[b]);
}

static void heap_down(double *ratio, int64_t *flat, int64_t size, int64_t at)
{
	for (;;) {
		int64_t worst = at;
		const int64_t left = 2 * at + 1, right = left + 1;
		if (left < size && heap_worse(ratio, flat, left, worst))
			worst = left;
		if (right < size && heap_worse(ratio, flat, right, worst))
			worst = right;
		if (worst == at)
			return;
		const double r = ratio[at];
		const int64_t f = flat[at];
		ratio[at] = ratio[worst];
		flat[at] = flat[worst];
		ratio[worst] = r;
		flat[worst] = f;
		at = worst;
	}
}

static inline void onset_offer(struct sw_onset *o, int64_t e, double ratio)
{
	if (o->found < o->keep) {
		o->flat[o->found] = e;
		o->ratio[o->found] = ratio;
		if (++o->found == o->keep)
			for (int64_t k = o->keep / 2 - 1; k >= 0; k--)
				heap_down(o->ratio, o->flat, o->keep, k);
		return;
	}
	o->found++;
	if (ratio > o->ratio[0]) {
		o->flat[0] = e;
		o->ratio[0] = ratio;
		heap_down(o->ratio, o->flat, o->keep, 0);
	}
}

/* A baseline element's cap, (sqrt(var)·k_sigma + mean)·margin: detection's and learning's. */
static inline double baseline_cap(double mean, double var, double k_sigma, double margin)
{
	double cap = sqrt(var);
	cap *= k_sigma;
	cap += mean;
	cap *= margin;
	return cap;
}

/*
 * Detection of n destinations: their baseline rows are `slots[i]` of mean, var, learned
 * (`classes` wide). Per element, with cap = baseline_cap(mean, var):
 *   warm      = learned >= warmup_s
 *   threshold = warm:                        max(cap / sensitivity, min_pps)
 *               learned >= partial_s:        max(max(cap / sensitivity, onset_floor[c]), min_pps)
 *               younger:                     max(floor[c], min_pps)
 *   anomalous = known && pps > threshold      (known: the row's tenant is configured and the read valid)
 *   over_cap  = pps > max(cap, 1)             (learning winsorises these: it needs no cap for the others)
 * and the flood-onset candidates are offered to `onset` (above).
 * (the cap and pps - mean are not kept: learning and the few other readers work them out again from
 * the same state, policy/detect.py's RowValues).
 * `min_pps`, `sensitivity`: one value a row, or NULL for `min_pps_all`, `sensitivity_all`; `known`,
 * `valid`: one flag a row, or NULL for every row.
 */
#if defined(__AVX2__) && !defined(SW_SCALAR)
#include <immintrin.h>

/* numpy's maximum of four lanes: a where a >= b or a is NaN, else b. */
static inline __m256d np_max4(__m256d a, __m256d b)
{
	const __m256d take_a = _mm256_or_pd(_mm256_cmp_pd(a, b, _CMP_GE_OQ), _mm256_cmp_pd(a, a, _CMP_UNORD_Q));
	return _mm256_blendv_pd(b, a, take_a);
}

/* The first `lanes` (1 to 4) doubles at `at` in the low lanes, zeros above (masked loads and stores are
 * microcoded and slow on some CPUs: these take two plain ones for the row's last two classes). */
static inline __m256d load_lanes(const double *at, int64_t lanes)
{
	if (lanes == 4)
		return _mm256_loadu_pd(at);
	if (lanes == 2)
		return _mm256_zextpd128_pd256(_mm_loadu_pd(at));
	double four[4] = {0.0, 0.0, 0.0, 0.0};
	memcpy(four, at, (size_t)lanes * sizeof(double));
	return _mm256_loadu_pd(four);
}

static inline void store_lanes(double *at, __m256d value, int64_t lanes)
{
	if (lanes == 4) {
		_mm256_storeu_pd(at, value);
	} else if (lanes == 2) {
		_mm_storeu_pd(at, _mm256_castpd256_pd128(value));
	} else {
		double four[4];
		_mm256_storeu_pd(four, value);
		memcpy(at, four, (size_t)lanes * sizeof(double));
	}
}

/* Bytes 0/1 of the low `lanes` bits of a lane mask, written to out[0 .. lanes). */
static inline void store_flags(uint8_t *out, int bits, int64_t lanes)
{
	for (int64_t k = 0; k < lanes; k++)
		out[k] = (uint8_t)((bits >> k) & 1);
}

/*
 * Detection of four classes of a row at a time in AVX2 lanes (a row's last classes in the low lanes when
 * its classes are not a multiple of four): the scalar detect_row's operations on each element, in its
 * order (IEEE square roots, products, sums, quotients and comparisons of the same operands: the same
 * bits). The scalar loop, a square root, a division and a dozen selects an element one after another,
 * took 65-74 ms at a million destinations where this takes 35-46 ms, against ~23 ms for a loop that only
 * moves the same bytes (AMD EPYC, 2026-12-07, alternating runs in one process).
 */
static inline __attribute__((always_inline)) void
detect_lanes(int64_t out, int64_t at, int64_t c, int64_t lanes, int sens_one, const double *mean, const double *var,
	     const double *learned, const double *pps, double k_sigma, double margin, double warmup_s,
	     double partial_s, const double *floor_pps, const double *onset_floor_pps, double row_min,
	     double row_sens, int row_known, int row_valid, uint8_t *warm_out, double *threshold_out,
	     uint8_t *anomalous_out, uint8_t *over_cap_out, struct sw_onset *onset)
{
	const __m256d m = load_lanes(mean + at + c, lanes), v = load_lanes(var + at + c, lanes);
	const __m256d l = load_lanes(learned + at + c, lanes), p = load_lanes(pps + out, lanes);
	__m256d cap = _mm256_sqrt_pd(v);
	cap = _mm256_mul_pd(cap, _mm256_set1_pd(k_sigma));
	cap = _mm256_add_pd(cap, m);
	cap = _mm256_mul_pd(cap, _mm256_set1_pd(margin));
	/* x / 1 is x exactly: the common sensitivity of 1 needs no division */
	const __m256d base = sens_one ? cap : _mm256_div_pd(cap, _mm256_set1_pd(row_sens));
	const __m256d warm = _mm256_cmp_pd(l, _mm256_set1_pd(warmup_s), _CMP_GE_OQ);
	const __m256d partial = _mm256_cmp_pd(l, _mm256_set1_pd(partial_s), _CMP_GE_OQ);
	const __m256d young = _mm256_blendv_pd(load_lanes(floor_pps + c, lanes),
					       np_max4(base, load_lanes(onset_floor_pps + c, lanes)), partial);
	const __m256d threshold = np_max4(_mm256_blendv_pd(young, base, warm), _mm256_set1_pd(row_min));
	store_lanes(threshold_out + out, threshold, lanes);
	const int anomalous = row_known ? _mm256_movemask_pd(_mm256_cmp_pd(p, threshold, _CMP_GT_OQ)) : 0;
	store_flags(warm_out + out, _mm256_movemask_pd(warm), lanes);
	store_flags(anomalous_out + out, anomalous, lanes);
	store_flags(over_cap_out + out,
		    _mm256_movemask_pd(_mm256_cmp_pd(p, np_max4(cap, _mm256_set1_pd(1.0)), _CMP_GT_OQ)), lanes);
	if (!row_valid)
		return;
	const int jump = _mm256_movemask_pd(
		_mm256_cmp_pd(_mm256_sub_pd(p, m), _mm256_mul_pd(p, _mm256_set1_pd(onset->jump_share)), _CMP_GT_OQ));
	const int high = _mm256_movemask_pd(
		_mm256_cmp_pd(p, _mm256_mul_pd(_mm256_set1_pd(onset->min_share), threshold), _CMP_GT_OQ));
	const int candidates = ~anomalous & jump & high & ((1 << lanes) - 1);
	for (int64_t k = 0; candidates && k < lanes; k++)
		if ((candidates >> k) & 1)
			onset_offer(onset, out + k, pps[out + k] / np_max(threshold_out[out + k], 1.0));
}

static inline __attribute__((always_inline)) void
detect_row(int64_t i, int64_t classes, const int64_t *slots, const double *mean, const double *var,
	   const double *learned, const double *pps, double k_sigma, double margin, double warmup_s,
	   double partial_s, const double *floor_pps, const double *onset_floor_pps, double row_min,
	   double row_sens, int row_known, int row_valid, uint8_t *warm_out, double *threshold_out,
	   uint8_t *anomalous_out, uint8_t *over_cap_out, struct sw_onset *onset)
{
	const int64_t at = slots[i] * classes;
#define SW_LANES(c_, lanes_, sens_one_)                                                                      \
	detect_lanes(i * classes + (c_), at, c_, lanes_, sens_one_, mean, var, learned, pps, k_sigma, margin,  \
		     warmup_s, partial_s, floor_pps, onset_floor_pps, row_min, row_sens, row_known, row_valid,     \
		     warm_out, threshold_out, anomalous_out, over_cap_out, onset)
	/* The traffic classes' count known: the loop unrolled whole, each copy's lanes a constant (so its loads
	 * and stores are plain ones), and a sensitivity of 1 divides nothing. */
	if (classes == SW_CLASSES && row_sens == 1.0) {
#pragma clang loop unroll(full)
		for (int64_t c = 0; c < SW_CLASSES; c += 4)
			SW_LANES(c, SW_CLASSES - c < 4 ? SW_CLASSES - c : 4, 1);
	} else if (classes == SW_CLASSES) {
#pragma clang loop unroll(full)
		for (int64_t c = 0; c < SW_CLASSES; c += 4)
			SW_LANES(c, SW_CLASSES - c < 4 ? SW_CLASSES - c : 4, 0);
	} else {
		for (int64_t c = 0; c < classes; c += 4)
			SW_LANES(c, classes - c < 4 ? classes - c : 4, row_sens == 1.0);
	}
#undef SW_LANES
}
#define SW_DETECT_LANES 4
#else
/* The same without AVX2 (or built with SW_SCALAR, as a test does to compare the two): an element at a time. */
static inline __attribute__((always_inline)) void
detect_row(int64_t i, int64_t classes, const int64_t *slots, const double *mean, const double *var,
	   const double *learned, const double *pps, double k_sigma, double margin, double warmup_s,
	   double partial_s, const double *floor_pps, const double *onset_floor_pps, double row_min,
	   double row_sens, int row_known, int row_valid, uint8_t *warm_out, double *threshold_out,
	   uint8_t *anomalous_out, uint8_t *over_cap_out, struct sw_onset *onset)
{
	const int64_t at = slots[i] * classes;
	for (int64_t c = 0; c < classes; c++) {
		const int64_t out = i * classes + c;
		const double m = mean[at + c], l = learned[at + c], p = pps[out];
		const double cap = baseline_cap(m, var[at + c], k_sigma, margin);
		const int warm = l >= warmup_s;
		/* x / 1 is x exactly: the common sensitivity of 1 needs no division */
		const double base = row_sens == 1.0 ? cap : cap / row_sens;
		double threshold;
		if (warm)
			threshold = base;
		else if (l >= partial_s)
			threshold = np_max(base, onset_floor_pps[c]);
		else
			threshold = floor_pps[c];
		threshold = np_max(threshold, row_min);
		warm_out[out] = (uint8_t)warm;
		threshold_out[out] = threshold;
		const int anomalous = row_known && p > threshold;
		anomalous_out[out] = (uint8_t)anomalous;
		over_cap_out[out] = p > np_max(cap, 1.0);
		if (row_valid && !anomalous && p - m > p * onset->jump_share && p > onset->min_share * threshold)
			onset_offer(onset, out, p / np_max(threshold, 1.0));
	}
}
#define SW_DETECT_LANES 1
#endif

/* Elements detection works on at once: 4 in AVX2 lanes, 1 in the scalar build (tests compare the two). */
int64_t sw_detect_lanes(void)
{
	return SW_DETECT_LANES;
}

void sw_detect_rows(int64_t n, int64_t classes, const int64_t *slots,
		    const double *mean, const double *var, const double *learned, const double *pps,
		    double k_sigma, double margin, double warmup_s, double partial_s,
		    const double *floor_pps, const double *onset_floor_pps,
		    const double *min_pps, double min_pps_all,
		    const double *sensitivity, double sensitivity_all, const uint8_t *known, const uint8_t *valid,
		    uint8_t *warm_out, double *threshold_out, uint8_t *anomalous_out, uint8_t *over_cap_out,
		    struct sw_onset *onset)
{
	for (int64_t i = 0; i < n; i++) {
		const double row_min = min_pps ? min_pps[i] : min_pps_all;
		const double row_sens = sensitivity ? sensitivity[i] : sensitivity_all;
		const int row_known = known ? known[i] : 1, row_valid = valid ? valid[i] : 1;
		/* the traffic classes' count known here: the row's loop unrolled */
		if (classes == SW_CLASSES)
			detect_row(i, SW_CLASSES, slots, mean, var, learned, pps, k_sigma, margin, warmup_s, partial_s,
				   floor_pps, onset_floor_pps, row_min, row_sens, row_known, row_valid, warm_out,
				   threshold_out, anomalous_out, over_cap_out, onset);
		else
			detect_row(i, classes, slots, mean, var, learned, pps, k_sigma, margin, warmup_s, partial_s,
				   floor_pps, onset_floor_pps, row_min, row_sens, row_known, row_valid, warm_out,
				   threshold_out, anomalous_out, over_cap_out, onset);
	}
}

/*
 * One tick of learning (`dt` seconds, EWMA weight `ewma`) for n rows: row i of pps, cap and learn
 * updates baseline row `slots[i]` (or `first + i` when slots is NULL); a NULL cap is the element's
 * baseline_cap(mean, var) before the update (detection's, from the same state), worked out only where
 * `over_cap` (detection's pps > max(cap, 1), or NULL: everywhere) says the element may be winsorised.
 * Where learn is 0 the element stays as it is. Else, with l its learned seconds:
 *   alpha = max(dt / (l + dt), ewma)          (a running average while young)
 *   d     = pps - mean
 *   winsorised (pps > max(cap, 1), l >= warmup_s, l > 0): d = max(cap, 1) - mean
 *   mean += alpha·d;  var = (var + (alpha·d)·d)·(1 - alpha);  learned += dt
 */
static inline __attribute__((always_inline)) void
learn_row(int64_t i, int64_t classes, const int64_t *slots, int64_t first, double *mean, double *var,
	  double *learned, const double *pps, const double *cap, const uint8_t *over_cap, const uint8_t *learn,
	  double dt, double ewma, double warmup_s, double old_s, double k_sigma, double margin)
{
	const int64_t at = (slots ? slots[i] : first + i) * classes;
	for (int64_t c = 0; c < classes; c++) {
		const int64_t in = i * classes + c;
		if (!learn[in])
			continue;
		const double l = learned[at + c], m = mean[at + c], p = pps[in];
		/* past old_s seconds dt / (l + dt) is below half the EWMA weight: no division */
		const double alpha = l >= old_s ? ewma : np_max(dt / (l + dt), ewma);
		double d = p - m;
		if (l >= warmup_s && l > 0 && (!over_cap || over_cap[in])) {
			const double cap_in = cap ? cap[in] : baseline_cap(m, var[at + c], k_sigma, margin);
			const double ceiling = np_max(cap_in, 1.0);
			if (p > cap_in && p > ceiling)
				d = ceiling - m;
		}
		const double step = alpha * d;
		mean[at + c] = m + step;
		double v = var[at + c] + step * d;
		v *= 1.0 - alpha;
		var[at + c] = v;
		learned[at + c] = l + dt;
	}
}

void sw_learn_rows(int64_t n, int64_t classes, const int64_t *slots, int64_t first,
		   double *mean, double *var, double *learned,
		   const double *pps, const double *cap, const uint8_t *over_cap, const uint8_t *learn, double dt,
		   double ewma, double warmup_s, double k_sigma, double margin)
{
	/* dt / (l + dt) <= ewma / (2 + ewma) < ewma for l >= 2·dt / ewma (rounding is far smaller) */
	const double old_s = ewma > 0 ? 2.0 * dt / ewma : INFINITY;
	for (int64_t i = 0; i < n; i++) {
		if (classes == SW_CLASSES)
			learn_row(i, SW_CLASSES, slots, first, mean, var, learned, pps, cap, over_cap, learn, dt, ewma,
				  warmup_s, old_s, k_sigma, margin);
		else
			learn_row(i, classes, slots, first, mean, var, learned, pps, cap, over_cap, learn, dt, ewma,
				  warmup_s, old_s, k_sigma, margin);
	}
}

/*
 * Rates of n destination rows from their cumulative counters (`current`: `words` uint64 counters a
 * row, packets[classes] first), against the rate tracker's state by slot (`slots[i]`, row i's):
 * `prev` (words a slot: its counters as the next read's previous values), `read_of` (the number of
 * the read that last wrote them) and `kept` (they are kept values, not what that read said). This
 * is read number `read`; each slot is written once, as its row is done.
 *
 * A slot last written by the previous read: delta = current - previous, 0 for a counter below its
 * previous value (the row came out low: the first time, the slot keeps max(current, previous) and
 * is marked kept; when it already was, the counters were reset and count on from current). A slot
 * last written by the read before (its address missed one read): current - that value when no
 * counter is below it, else current. Any other slot (a new address): current.
 * The packets' deltas become pps = (double)delta · inv_dt (numpy's conversion and product), the
 * other words' deltas go to rest32 (uint32) or, when it is NULL, to rest64. `prime`: the state only
 * (the first read has no rates). Returns the rows done: fewer than n when a delta of the next row
 * does not fit rest32 (that row and its slot are left as they were, for the caller to go on with
 * rest64); -1 - i when row i's slot was already written by this read (an address listed twice).
 */
/* One row of sw_slot_rates: 0 when done, 1 when a delta does not fit rest32 (nothing written). */
static inline int slot_rate_row(int64_t i, int64_t words, int64_t classes, const uint64_t *restrict current,
				const int64_t *restrict slots, uint64_t *restrict prev, int64_t *restrict read_of,
				uint8_t *restrict kept, int64_t read, double inv_dt, int32_t prime, double *restrict pps,
				uint32_t *restrict rest32, uint64_t *restrict rest64)
{
	uint64_t delta[SW_MAX_COUNTER_WORDS];
	const uint64_t *cur = current + i * words;
	const int64_t s = slots[i];
	uint64_t *was = prev + s * words;
	const int64_t last = read_of[s];
	int below = 0, keep = 0;
	for (int64_t w = 0; w < words; w++)
		below |= cur[w] < was[w];
	if (last == read - 1 && !below && !prime && rest32) {
		/* The usual row: every counter at or above its previous value, 32-bit rest. */
		const int64_t rest_words = words - classes;
		uint64_t high = 0;
		for (int64_t w = classes; w < words; w++)
			high |= (cur[w] - was[w]) >> 32;
		if (high)
			return 1;
		for (int64_t w = 0; w < classes; w++)
			pps[i * classes + w] = (double)(cur[w] - was[w]) * inv_dt;
		for (int64_t w = classes; w < words; w++)
			rest32[i * rest_words + w - classes] = (uint32_t)(cur[w] - was[w]);
		memcpy(was, cur, (size_t)words * 8);
		kept[s] = 0;
		read_of[s] = read;
		return 0;
	}
	if (last == read - 1) {
		for (int64_t w = 0; w < words; w++)
			delta[w] = cur[w] < was[w] ? 0 : cur[w] - was[w];
		keep = below && !kept[s] && !prime;
	} else if (last == read - 2 && !below) {
		for (int64_t w = 0; w < words; w++)
			delta[w] = cur[w] - was[w];
	} else {
		for (int64_t w = 0; w < words; w++)
			delta[w] = cur[w];
	}
	if (!prime) {
		const int64_t rest_words = words - classes;
		if (rest32) {
			uint64_t high = 0;
			for (int64_t w = classes; w < words; w++)
				high |= delta[w] >> 32;
			if (high)
				return 1;
			for (int64_t w = classes; w < words; w++)
				rest32[i * rest_words + w - classes] = (uint32_t)delta[w];
		} else {
			for (int64_t w = classes; w < words; w++)
				rest64[i * rest_words + w - classes] = delta[w];
		}
		for (int64_t w = 0; w < classes; w++)
			pps[i * classes + w] = (double)delta[w] * inv_dt;
	}
	for (int64_t w = 0; w < words; w++)
		was[w] = keep && was[w] > cur[w] ? was[w] : cur[w];
	kept[s] = (uint8_t)keep;
	read_of[s] = read;
	return 0;
}

int64_t sw_slot_rates(int64_t n, int64_t words, int64_t classes, const uint64_t *current, const int64_t *slots,
		      uint64_t *prev, int64_t *read_of, uint8_t *kept, int64_t read, double inv_dt, int32_t prime,
		      double *pps, uint32_t *rest32, uint64_t *rest64)
{
	/* The usual row (packets, bytes, dropped of SW_CLASSES classes) with its sizes known: unrolled. */
	const int usual = words == 2 * SW_CLASSES + 1 && classes == SW_CLASSES;
	for (int64_t i = 0; i < n; i++) {
		if (read_of[slots[i]] == read)
			return -1 - i;
		const int stop = usual ? slot_rate_row(i, 2 * SW_CLASSES + 1, SW_CLASSES, current, slots, prev, read_of,
							kept, read, inv_dt, prime, pps, rest32, rest64)
				       : slot_rate_row(i, words, classes, current, slots, prev, read_of, kept, read, inv_dt,
						       prime, pps, rest32, rest64);
		if (stop)
			return i;
	}
	return n;
}

/*
 * The rate tracker's slots of n addresses from the reader's ids: slots_out[i] is the slot remembered
 * for ids[i] (slot_of_id, n_table entries) when that slot is in use and still holds the address
 * keys[i] (two uint64 words; slot_keys, n_slots rows), else -1.
 */
void sw_slots_by_id(int64_t n, const int64_t *ids, const int32_t *slot_of_id, int64_t n_table,
		       const uint64_t *slot_keys, const uint8_t *in_use, int64_t n_slots, const uint64_t *keys,
		       int32_t *slots_out)
{
	for (int64_t i = 0; i < n; i++) {
		const int64_t id = ids[i];
		const int64_t s = id >= 0 && id < n_table ? slot_of_id[id] : -1;
		const int same = s >= 0 && s < n_slots && in_use[s] && slot_keys[2 * s] == keys[2 * i]
			&& slot_keys[2 * s + 1] == keys[2 * i + 1];
		slots_out[i] = same ? (int32_t)s : -1;
	}
}
