/*
 * hash.h -- the two hash primitives psd uses, written once: the SplitMix64
 * finalizer and FNV-1a over a string. Placement (placement.c), the init
 * stream keys and name hashes (psmath.c), the server-list hash of the hello
 * and the u64map's slots all build on these.
 *
 * Their values are part of psd's behaviour: they decide which shard owns a
 * block, what a tensor's initial weights are and what the hello compares.
 * Never change them; tests/test_common.c pins them.
 */
#ifndef PSD_HASH_H
#define PSD_HASH_H

#include <stdint.h>

/* The SplitMix64 golden-ratio increment (2^64 / phi). */
#define PSH_GOLDEN UINT64_C(0x9E3779B97F4A7C15)

/* FNV-1a 64's offset basis (the standard one: psm_hash_name). */
#define PSH_FNV_BASIS UINT64_C(0xCBF29CE484222325)
/* The offset basis of the server-list hashes (placement.c): the standard
 * basis's decimal form with its last digit lost, 1469598103934665603. Any
 * nonzero basis hashes as well; this one is kept because block placement
 * and the hello's servers_hash depend on it. */
#define PSH_FNV_BASIS_LIST UINT64_C(0x14650FB0739D0383)
#define PSH_FNV_PRIME UINT64_C(0x100000001B3)

/* The SplitMix64 finalizer (Stafford's "mix13"): a bijection on 64-bit
 * words with full avalanche. Applied to key + i*PSH_GOLDEN it yields the
 * i-th output of a SplitMix64 stream seeded with key. Always inlined: the
 * initializers' fill loops must stay vectorizable around it. */
static inline __attribute__((always_inline)) uint64_t psh_mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
  z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
  return z ^ (z >> 31);
}

/* FNV-1a 64 over the bytes of s (up to its NUL), starting from `basis`
 * (PSH_FNV_BASIS or PSH_FNV_BASIS_LIST). Byte-wise: the same on every
 * machine. */
static inline uint64_t psh_fnv1a(uint64_t basis, const char *s) {
  uint64_t h = basis;
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    h ^= *p;
    h *= PSH_FNV_PRIME;
  }
  return h;
}

#endif /* PSD_HASH_H */
