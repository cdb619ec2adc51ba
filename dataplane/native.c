// SPDX-License-Identifier: Apache-2.0
/*
 * The counter reader's passes over a million spilled addresses, one row at a time
 * (dataplane/native.py compiles this file and calls it through ctypes; dataplane/reader.py says
 * what the passes are for). numpy made several whole-array passes for each: index tables, scatters
 * of whole rows, gather-add-scatters; here each row is read once and written once. Integer
 * arithmetic only: the results are numpy's exactly.
 */
#include <stdint.h>
#include <string.h>

/*
 * The keys of a hash map's or the spill store's listing, n of them at `src` every `stride` bytes
 * (two uint64 words each: the address), copied into `keys_out` (n, 2), and each one's id from the
 * previous listing where that listing had the same key at the same position (`prev_ids`, n_prev of
 * them: ids, whose keys are rows of `id_keys`, n_ids of them), else -1 in `ids_out`. Returns how many
 * found no id. The copy is read once: the kernel may be writing the store meanwhile, and the ids
 * must match the keys kept.
 */
int64_t sw_listed_match(int64_t n, const uint8_t *src, int64_t stride, const int64_t *prev_ids, int64_t n_prev,
			const uint64_t *id_keys, int64_t n_ids, uint64_t *keys_out, int64_t *ids_out)
{
	int64_t unmatched = 0;
	for (int64_t i = 0; i < n; i++) {
		const uint64_t *key = (const uint64_t *)(src + i * stride);
		const uint64_t k0 = key[0], k1 = key[1];
		keys_out[2 * i] = k0;
		keys_out[2 * i + 1] = k1;
		const int64_t id = i < n_prev ? prev_ids[i] : -1;
		if (id >= 0 && id < n_ids && id_keys[2 * id] == k0 && id_keys[2 * id + 1] == k1) {
			ids_out[i] = id;
		} else {
			ids_out[i] = -1;
			unmatched++;
		}
	}
	return unmatched;
}

/*
 * The columns of the spill store's first n slots that a read needs besides the addresses and counters,
 * in one pass over the mapped store (`row_words` words a slot): the word at `tenant_at`, read once,
 * gives the tenant (its low half, into `tenants_out`) and whether the slot is claimed (its high half
 * nonzero, into `claimed_out`). Two numpy passes read these apart (~20 ms at a million slots, each a
 * cache miss a slot). Returns how many slots are claimed.
 */
int64_t sw_store_columns(int64_t n, const uint64_t *words, int64_t row_words, int64_t tenant_at,
			 uint32_t *tenants_out, uint8_t *claimed_out)
{
	int64_t claimed = 0;
	for (int64_t i = 0; i < n; i++) {
		const uint64_t tenant_word = words[i * row_words + tenant_at];
		const int is_claimed = (tenant_word >> 32) != 0;
		tenants_out[i] = (uint32_t)tenant_word;
		claimed_out[i] = (uint8_t)is_claimed;
		claimed += is_claimed;
	}
	return claimed;
}

static int mark(uint8_t *present, int64_t n_ids, const int64_t *ids, int64_t n)
{
	for (int64_t i = 0; i < n; i++) {
		const int64_t id = ids[i];
		if (id < -1 || id >= n_ids)
			return -1;
		if (id >= 0)
			present[id] = 1;
	}
	return 0;
}

/*
 * The merge's rows: one per address id present in any of three lists (ids below 0 skipped), in
 * ascending id order. Writes `row_of` (n_ids: the row of each present id) and `ids_out` (the ids
 * of the rows); returns the number of rows, or -1 for an id out of 0..n_ids-1.
 */
int64_t sw_merge_index(int64_t n_ids, const int64_t *a, int64_t a_n, const int64_t *b, int64_t b_n,
		       const int64_t *c, int64_t c_n, uint8_t *present, int64_t *row_of, int64_t *ids_out)
{
	memset(present, 0, (size_t)n_ids);
	if (mark(present, n_ids, a, a_n) || mark(present, n_ids, b, b_n) || mark(present, n_ids, c, c_n))
		return -1;
	int64_t rows = 0;
	for (int64_t id = 0; id < n_ids; id++) {
		if (present[id]) {
			row_of[id] = rows;
			ids_out[rows++] = id;
		}
	}
	return rows;
}

/*
 * Where each of the merge's n_rows rows comes from (`row_of`: the row of each id): `spill_src[r]` the
 * first spilled row (of s_n, ids `s_ids`, -1 for none) and `cache_src[r]` the cached row (of c_n,
 * ids `c_ids`) of row r, -1 where it has none. `tenants[r]`: the tenant of its last spilled row,
 * the cached row's where it has one. Returns how many spilled rows repeat an id already listed
 * (rare: the caller adds those up).
 */
int64_t sw_merge_sources(int64_t n_rows, const int64_t *row_of, const int64_t *s_ids, int64_t s_n,
			 const uint32_t *s_tenants, const int64_t *c_ids, int64_t c_n, const uint32_t *c_tenants,
			 int32_t *spill_src, int32_t *cache_src, uint32_t *tenants)
{
	memset(spill_src, 0xff, (size_t)n_rows * sizeof(*spill_src));
	memset(cache_src, 0xff, (size_t)n_rows * sizeof(*cache_src));
	int64_t repeats = 0;
	for (int64_t i = 0; i < s_n; i++) {
		if (s_ids[i] < 0)
			continue;
		const int64_t r = row_of[s_ids[i]];
		if (spill_src[r] < 0)
			spill_src[r] = (int32_t)i;
		else
			repeats++;
		tenants[r] = s_tenants[i];
	}
	for (int64_t i = 0; i < c_n; i++) {
		const int64_t r = row_of[c_ids[i]];
		cache_src[r] = (int32_t)i;
		tenants[r] = c_tenants[i];
	}
	return repeats;
}

/*
 * Rows lo..hi-1 of the merge into `out` ((hi - lo) rows of `width` words): each row's spilled row
 * (`width` leading words every `s_stride` bytes from `s_rows`, in place in the mapped store) plus its
 * cached row (contiguous rows of `c_rows`), zeros where it has neither (see sw_merge_sources).
 */
#define MERGE_PREFETCH_ROWS 8   /* rows ahead whose sources sw_merge_fill asks the CPU to fetch */

void sw_merge_fill(int64_t lo, int64_t hi, int64_t width, uint64_t *out, const int32_t *spill_src,
		   const uint8_t *s_rows, int64_t s_stride, const int32_t *cache_src, const uint64_t *c_rows)
{
	for (int64_t r = lo; r < hi; r++) {
		/* The sources are rows of the store and of the cache in their own orders, not the rows': fetch
		 * them a few rows ahead so that the loop does not wait on each. */
		if (r + MERGE_PREFETCH_ROWS < hi) {
			const int32_t s_ahead = spill_src[r + MERGE_PREFETCH_ROWS], c_ahead = cache_src[r + MERGE_PREFETCH_ROWS];
			if (s_ahead >= 0) {      /* its first and last words: a row spans two cache lines */
				__builtin_prefetch(s_rows + (int64_t)s_ahead * s_stride);
				__builtin_prefetch(s_rows + (int64_t)s_ahead * s_stride + (width * 8 - 8));
			}
			if (c_ahead >= 0) {
				__builtin_prefetch(c_rows + (int64_t)c_ahead * width);
				__builtin_prefetch(c_rows + (int64_t)c_ahead * width + width - 1);
			}
		}
		uint64_t *dst = out + (r - lo) * width;
		const int32_t s = spill_src[r], c = cache_src[r];
		if (s >= 0)
			memcpy(dst, s_rows + (int64_t)s * s_stride, (size_t)width * 8);
		else
			memset(dst, 0, (size_t)width * 8);
		if (c >= 0) {
			const uint64_t *add = c_rows + (int64_t)c * width;
			for (int64_t w = 0; w < width; w++)
				dst[w] += add[w];
		}
	}
}
