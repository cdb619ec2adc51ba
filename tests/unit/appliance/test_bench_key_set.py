"""The real-map policy benchmark's check that the engine saw exactly the addresses in the maps
(`appliance.bench.policy_real.KeySet`): equal for the same keys in any order, different for a
missing, an extra or a repeated key."""

from __future__ import annotations

import numpy as np

from appliance.bench.policy_real import KeySet


def test_key_sets_are_equal_in_any_order_and_differ_for_a_missing_extra_or_repeated_key():
    rng = np.random.default_rng(4)
    keys = rng.integers(0, 2**63, (150_000, 2), dtype=np.uint64)     # more rows than one hashing block
    keys[:, 1] = np.arange(len(keys), dtype=np.uint64)                # distinct
    whole = KeySet.of(keys)
    assert KeySet.of(keys[rng.permutation(len(keys))]) == whole
    assert whole.count == len(keys)
    assert KeySet.of(keys[1:]) != whole
    assert KeySet.of(np.concatenate([keys, keys[:1] + np.uint64(1 << 62)])) != whole
    repeated = keys.copy()
    repeated[-1] = repeated[0]                                        # one repeated, one missing: same count
    assert KeySet.of(repeated).count == whole.count and KeySet.of(repeated) != whole
    swapped = keys.copy()
    swapped[0] = swapped[0, ::-1]                                     # the words of one key swapped
    assert KeySet.of(swapped) != whole
