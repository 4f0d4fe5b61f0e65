// Human-readable byte counts for messages: 1536 -> "1.50 KiB". (apps/cli.h has the CLI's own
// copy; this one serves the libraries, which do not depend on apps/.)
#pragma once

#include <string>

namespace stp::allocator {

std::string format_bytes(double bytes);

}  // namespace stp::allocator
