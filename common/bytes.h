// Byte counts as people write and read them, for every layer's messages and flags:
//   parse_bytes("20GiB") -> 21474836480; "512MiB", "1.5GB", "4096" also work (binary and
//   decimal units); format_bytes(1536) -> "1.50 KiB".
#pragma once

#include <cstdint>
#include <string>

namespace stp {

// Throws std::invalid_argument naming `what`, the text and the accepted forms (>= 0).
std::int64_t parse_bytes(const std::string& text, const std::string& what);

// Binary units with `decimals` digits after the point ("1.50 KiB"); whole bytes below 1 KiB.
std::string format_bytes(double bytes, int decimals = 2);

}  // namespace stp
