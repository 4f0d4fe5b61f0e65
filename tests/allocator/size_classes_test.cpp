#include "allocator/size_classes.h"

#include <gtest/gtest.h>

#include <random>
#include <stdexcept>
#include <vector>

namespace stp::allocator {
namespace {

// Sizes that tend to break rounding: around powers of two, primes, odd tensor shapes.
std::vector<std::size_t> awkward_sizes() {
  std::vector<std::size_t> sizes;
  for (std::size_t n = 1; n <= 70000; ++n) sizes.push_back(n);
  for (int k = 10; k < 62; ++k) {
    std::size_t p = std::size_t{1} << k;
    for (std::size_t d : {std::size_t{1}, std::size_t{2}, std::size_t{7}, p / 8, p / 8 + 1}) {
      sizes.push_back(p - d);
      sizes.push_back(p + d);
    }
    sizes.push_back(p);
  }
  // bf16 activations of (b=3, s=4097, h=5120), (1, 2049, 12288) * 4 bytes, a few large primes.
  for (std::size_t n : {std::size_t{3} * 4097 * 5120 * 2, std::size_t{2049} * 12288 * 4,
                        std::size_t{1000003}, std::size_t{2147483647}, std::size_t{68719476767}})
    sizes.push_back(n);
  std::mt19937_64 rng(42);
  for (int i = 0; i < 20000; ++i) sizes.push_back(1 + rng() % (std::size_t{1} << 40));
  return sizes;
}

TEST(SizeClasses, WasteIsBelowOneEighthAboveTheBoundAndBelowAlignmentUnder) {
  for (std::size_t n : awkward_sizes()) {
    std::size_t c = size_class(n);
    ASSERT_GE(c, n) << n;
    std::size_t waste = c - n;
    if (n >= kMinBoundedBytes) {
      // waste / n < 12.5 %, in integers: 8 * waste < n.
      ASSERT_LT(waste * kClassesPerDoubling, n) << "n=" << n << " class=" << c;
    } else {
      ASSERT_LT(waste, kAlignment) << n;
    }
  }
}

TEST(SizeClasses, ClassesAreAlignedIdempotentAndMonotonic) {
  std::size_t prev_n = 0, prev_c = 0;
  for (std::size_t n : awkward_sizes()) {
    std::size_t c = size_class(n);
    ASSERT_EQ(c % kAlignment, 0u) << n;
    ASSERT_EQ(size_class(c), c) << n;  // a class serves itself exactly
    if (n > prev_n) {
      ASSERT_GE(c, prev_c) << n;
    }
    prev_n = n;
    prev_c = c;
  }
}

TEST(SizeClasses, EightClassesPerDoubling) {
  // Requests in [2^20, 2^21) get the classes 2^20 + k * 2^17, k = 0..8 (the last, 2^21, is
  // the first class of the next doubling): eight classes per doubling.
  std::vector<std::size_t> seen;
  for (std::size_t n = (1 << 20); n < (1 << 21); n += 4096) {
    std::size_t c = size_class(n);
    if (seen.empty() || seen.back() != c) seen.push_back(c);
  }
  ASSERT_EQ(seen.size(), 9u);
  for (std::size_t k = 0; k < 9; ++k) EXPECT_EQ(seen[k], (std::size_t{1} << 20) + k * (1 << 17));
  // Power-of-two rounding would give 2 MiB for 1 MiB + 1; we give 1 MiB + 128 KiB.
  EXPECT_EQ(size_class((1 << 20) + 1), (1u << 20) + (1u << 17));
}

TEST(SizeClasses, RejectsZeroAndOversize) {
  EXPECT_THROW(size_class(0), std::invalid_argument);
  EXPECT_THROW(size_class(max_request_bytes() + 1), std::invalid_argument);
  EXPECT_EQ(size_class(max_request_bytes()), max_request_bytes());
}

}  // namespace
}  // namespace stp::allocator
