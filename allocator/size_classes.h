// Size classes of the pinned host pool (Note [Pinned pool design] in pinned_host_pool.h).
//
// A request of n bytes is served by a block of size_class(n) bytes. Classes split every power
// of two into kClassesPerDoubling equal steps (jemalloc-style), so a request just above 2^k is
// rounded up by less than 2^k / 8: internal waste is below 12.5 % of the request. Power-of-two
// rounding would waste up to 100 %. Below kMinBoundedBytes the step is kAlignment and the
// waste is below kAlignment bytes instead.
//
// Every class is a multiple of kAlignment, so every block carved from a slab is aligned.
//
// Thread-safety: pure functions.
#pragma once

#include <cstddef>

namespace stp::allocator {

inline constexpr std::size_t kAlignment = 64;          // bytes; block size and address granularity
inline constexpr std::size_t kClassesPerDoubling = 8;  // classes in [2^k, 2^(k+1))
// Requests of at least this many bytes (8 * kAlignment) waste < 1/kClassesPerDoubling.
inline constexpr std::size_t kMinBoundedBytes = kAlignment * kClassesPerDoubling;

// The block size that serves `bytes`. REQUIRES: 0 < bytes <= max_request_bytes().
// Throws std::invalid_argument otherwise.
std::size_t size_class(std::size_t bytes);

// The largest request size_class() accepts (its class must fit in size_t).
std::size_t max_request_bytes();

}  // namespace stp::allocator
