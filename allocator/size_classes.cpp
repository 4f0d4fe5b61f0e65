#include "allocator/size_classes.h"

#include <bit>
#include <limits>

#include "common/check.h"

namespace stp::allocator {

std::size_t max_request_bytes() {
  // The top class of the highest doubling: 2^63 itself (the doubling above overflows).
  return std::size_t{1} << (std::numeric_limits<std::size_t>::digits - 1);
}

std::size_t size_class(std::size_t bytes) {
  STP_CHECK(bytes > 0 && bytes <= max_request_bytes(), "pinned block request of ", bytes,
            " bytes: must be in [1, ", max_request_bytes(), "]");
  // Step: 1/8 of the power of two at or below `bytes`, never below kAlignment.
  std::size_t floor_pow2 = std::bit_floor(bytes);
  std::size_t step = floor_pow2 / kClassesPerDoubling;
  if (step < kAlignment) step = kAlignment;
  return (bytes + step - 1) / step * step;
}

}  // namespace stp::allocator
